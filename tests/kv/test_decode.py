"""Engine KV-event payload decoding and the bridge's pure per-pod logic, on real vLLM 0.32 captures."""

from __future__ import annotations

import msgspec
import pytest

from brixmesh.common.messages import KvAllCleared, KvBlockRemoved, KvBlockStored
from brixmesh.engine_sim.kv_event_types import BlockRemoved, BlockStored, encode_batch
from brixmesh.kv_index.decode import PayloadError, decode_payload, to_u64
from brixmesh.kv_index.pod_blocks import PodBlocks
from brixmesh.kv_index.sequencer import SeqTracker
from tests.engine_sim.captures import load_capture
from tests.kv.held_blocks import track_held


def _payloads(name: str) -> list[bytes]:
    return [msgspec.msgpack.encode(message["batch"]) for message in load_capture(name)]


def test_capture_store_remove_decodes_every_event() -> None:
    messages = load_capture("kv_events_store_remove.jsonl")
    stored = removed = 0
    for message, payload in zip(messages, _payloads("kv_events_store_remove.jsonl")):
        batch = decode_payload(payload)
        assert batch.ts == message["batch"][0]
        assert len(batch.events) == len(message["batch"][1])
        for raw, event in zip(message["batch"][1], batch.events):
            if raw["type"] == "BlockStored":
                assert isinstance(event, KvBlockStored)
                assert event.block_hashes == raw["block_hashes"]
                assert event.parent_block_hash == raw["parent_block_hash"]
                assert event.token_ids == raw["token_ids"] and event.block_size == 32 and event.medium == "GPU"
                stored += 1
            else:
                assert isinstance(event, KvBlockRemoved) and event.block_hashes == raw["block_hashes"]
                removed += 1
    assert (stored, removed) == (539, 711)


def test_capture_lora_names_and_cleared() -> None:
    names = {
        event.lora_name
        for payload in _payloads("kv_events_lora.jsonl")
        for event in decode_payload(payload).events
        if isinstance(event, KvBlockStored)
    }
    assert names == {None, "static-a", "dyn-b"}
    cleared = [decode_payload(p).events for p in _payloads("kv_events_all_cleared.jsonl")]
    assert isinstance(cleared[1][0], KvAllCleared)


def test_array_encoding_and_bytes_hashes_decode_to_the_same_u64() -> None:
    digest = bytes(range(32))
    events = [
        BlockStored([digest], None, list(range(4)), 4, None, "GPU", None),
        BlockRemoved([int.from_bytes(digest, "big") & (2**64 - 1)], None),
    ]
    for encoding in ("map", "array"):
        batch = decode_payload(encode_batch(events, 1.5, 0, encoding))
        stored, removed = batch.events
        assert isinstance(stored, KvBlockStored) and isinstance(removed, KvBlockRemoved)
        assert stored.block_hashes == removed.block_hashes == [to_u64(digest)]
        assert removed.medium == "GPU"


def test_legacy_lora_id_without_name_is_kept() -> None:
    payload = msgspec.msgpack.encode([1.0, [["BlockStored", [7], None, [1, 2], 2, 3, "GPU"]], 0])
    (event,) = decode_payload(payload).events
    assert isinstance(event, KvBlockStored) and event.lora_id == 3 and event.lora_name is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x93\xcb",  # truncated
        msgspec.msgpack.encode({"not": "a batch"}),
        msgspec.msgpack.encode([1.0, [{"type": "Nope"}], 0]),
        msgspec.msgpack.encode([1.0, [{"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
                                        "token_ids": [1, 2, 3], "block_size": 2}], 0]),  # fmt: skip
    ],
)
def test_bad_payloads_raise_payload_error(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_payload(payload)


def test_sequencer_verdicts() -> None:
    tracker = SeqTracker()
    assert tracker.classify(5, ts=1.0) == "gap" and tracker.missing_from() == 0
    tracker.applied(5, ts=1.0)
    assert tracker.classify(6, ts=1.1) == "apply"
    assert tracker.classify(9, ts=1.2) == "gap" and tracker.missing_from() == 6
    tracker.applied(9, ts=1.2)
    assert tracker.classify(8, ts=1.15) == "stale"
    assert tracker.classify(0, ts=0.5) == "stale"  # seq 0 replayed first, then seen again on the socket
    assert tracker.classify(0, ts=2.0) == "restart"
    assert tracker.classify(3) == "stale"  # undecodable: no time to tell a restart by


def test_pod_blocks_match_capture_state_and_snapshot_orders_parents_first() -> None:
    blocks = PodBlocks()
    held: dict[int, int] = {}
    for payload in _payloads("kv_events_store_remove.jsonl"):
        events = decode_payload(payload).events
        blocks.apply(events)
        track_held(held, events)
    snapshot = blocks.snapshot_events()
    assert sorted(e.block_hashes[0] for e in snapshot) == sorted(h for h, n in held.items() for _ in range(n))
    seen: set[int] = set()
    for event in snapshot:
        if event.parent_block_hash in held:
            assert event.parent_block_hash in seen
        seen.add(event.block_hashes[0])
    blocks.apply([KvAllCleared()])
    assert len(blocks) == 0 and blocks.snapshot_events() == []


def test_sequencer_sees_a_restart_in_a_newer_batch_with_a_lower_seq() -> None:
    tracker = SeqTracker()
    tracker.applied(10, ts=100.0)
    assert tracker.classify(8, ts=99.0) == "stale"  # reordered, already recovered
    assert tracker.classify(8, ts=101.0) == "restart"  # new engine, first batches missed
