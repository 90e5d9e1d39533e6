"""KV-event wire format and the ZMQ publisher, checked the way a non-vLLM consumer sees them.

Payloads are decoded with msgspec's schemaless msgpack decoder (plain msgpack, no vLLM types).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from brixmesh.engine_sim.kv_event_types import AllBlocksCleared, BlockRemoved, BlockStored, encode_batch
from brixmesh.engine_sim.kv_events import (
    END_SEQ,
    NullKvEventPublisher,
    ZmqKvEventPublisher,
    create_publisher,
)
from brixmesh.engine_sim.kv_events_config import (
    KvEventsConfig,
    offset_endpoint,
    parse_kv_events_config,
    should_bind,
)

from tests.engine_sim.captures import load_capture

CAPTURE_FILES = ["kv_events_store_remove.jsonl", "kv_events_all_cleared.jsonl", "kv_events_lora.jsonl"]
_EVENT_TYPES = {
    "BlockStored": BlockStored,
    "BlockRemoved": BlockRemoved,
    "AllBlocksCleared": AllBlocksCleared,
}
TIMEOUT_S = 5.0


def _decode(payload: bytes) -> Any:
    return msgspec.msgpack.decode(payload)


def _removed(h: int) -> BlockRemoved:
    return BlockRemoved(block_hashes=[h], medium="GPU", group_idx=0)


# ----- encoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_reencoded_capture_payloads_match_vllm_bytes(name: str) -> None:
    messages = load_capture(name)
    assert messages
    for message in messages:
        ts, events, rank = message["batch"]
        structs = [_EVENT_TYPES[e["type"]](**{k: v for k, v in e.items() if k != "type"}) for e in events]
        payload = encode_batch(structs, ts, rank)
        assert len(payload) == message["payload_len"], message["seq"]
        assert payload[:48].hex() == message["payload_hex_head"], message["seq"]
        assert _decode(payload) == message["batch"]


def test_map_encoding_omits_none_defaults_but_keeps_required_nulls() -> None:
    stored = BlockStored(
        block_hashes=[1],
        parent_block_hash=None,
        token_ids=[5, 6],
        block_size=2,
        lora_id=None,
        medium="GPU",
        lora_name=None,
    )
    [event] = _decode(encode_batch([stored], 1.5, 0))[1]
    assert list(event) == [
        "type",
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
    ]
    assert _decode(encode_batch([AllBlocksCleared()], 1.5, 3)) == [1.5, [{"type": "AllBlocksCleared"}], 3]
    stored.group_idx, stored.kv_cache_spec_kind, stored.session_id = 0, "full_attention", "s-1"
    [event] = _decode(encode_batch([stored], 1.5, 0))[1]
    assert list(event)[-3:] == ["group_idx", "kv_cache_spec_kind", "session_id"]


def test_array_encoding_is_positional_with_tag_first() -> None:
    stored = BlockStored(
        block_hashes=[b"\x01" * 32],
        parent_block_hash=7,
        token_ids=[5, 6],
        block_size=2,
        lora_id=1,
        medium="GPU",
        lora_name="a",
        extra_keys=[["a"]],
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )
    batch = _decode(encode_batch([stored, _removed(9), AllBlocksCleared()], 2.0, 0, "array"))
    assert batch == [
        2.0,
        [
            ["BlockStored", [b"\x01" * 32], 7, [5, 6], 2, 1, "GPU"],
            ["BlockRemoved", [9], "GPU"],
            ["AllBlocksCleared"],
        ],
        0,
    ]
    with pytest.raises(ValueError, match="unknown KV event encoding"):
        encode_batch([], 0.0, 0, "json")  # type: ignore[arg-type]


# ----- config --------------------------------------------------------------------------------------


def test_config_defaults_match_vllm() -> None:
    cfg = parse_kv_events_config("{}")
    assert cfg == KvEventsConfig()
    assert (cfg.publisher, cfg.endpoint, cfg.replay_endpoint) == ("null", "tcp://*:5557", None)
    assert (cfg.buffer_steps, cfg.hwm, cfg.max_queue_size, cfg.topic) == (10_000, 100_000, 100_000, "")
    assert not cfg.publishes
    enabled = parse_kv_events_config('{"enable_kv_cache_events": true}')
    assert enabled.publisher == "zmq" and enabled.publishes
    assert not parse_kv_events_config({"enable_kv_cache_events": True, "publisher": "null"}).publishes
    assert not parse_kv_events_config({"publisher": "zmq"}).publishes


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"endpont": "x"}', "unknown key"),
        ('{"publisher": "kafka"}', "publisher must be 'zmq' or 'null'"),
        ('{"hwm": "10"}', "hwm must be int"),
        ('{"buffer_steps": true}', "buffer_steps must be int"),
        ('{"max_queue_size": -1}', "max_queue_size must be >= 0"),
        ('{"enable_kv_cache_events": 1}', "enable_kv_cache_events must be bool"),
    ],
)
def test_config_errors_are_one_line(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_kv_events_config(raw)
    assert "\n" not in str(info.value)


def test_bind_connect_rule_and_rank_offset() -> None:
    assert should_bind("tcp://*:5557") and should_bind("tcp://[::]:5557") and should_bind("ipc:///tmp/x")
    assert should_bind("inproc://kv") and should_bind("tcp://127.0.0.1:*")
    assert not should_bind("tcp://127.0.0.1:5557") and not should_bind("tcp://localhost:5557")
    assert offset_endpoint("tcp://127.0.0.1:5557", 0) == "tcp://127.0.0.1:5557"
    assert offset_endpoint("tcp://127.0.0.1:5557", 2) == "tcp://127.0.0.1:5559"
    assert offset_endpoint("inproc://kv", 1) == "inproc://kv_dp1"
    with pytest.raises(ValueError, match="must be inproc or tcp"):
        offset_endpoint("ipc:///tmp/x", 1)


def test_null_publisher_when_disabled() -> None:
    pub = create_publisher(parse_kv_events_config('{"enable_kv_cache_events": false, "publisher": "zmq"}'))
    assert isinstance(pub, NullKvEventPublisher)
    assert pub.publish([_removed(1)]) is None


# ----- ZMQ round trips -----------------------------------------------------------------------------


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _config(endpoint: str, **extra: Any) -> KvEventsConfig:
    return parse_kv_events_config(
        {"enable_kv_cache_events": True, "endpoint": endpoint, "topic": "kv-events", **extra}
    )


def _recv(sock: zmq.Socket, timeout_s: float = TIMEOUT_S) -> list[bytes]:
    if not sock.poll(int(timeout_s * 1000)):
        raise AssertionError("no message within timeout")
    return sock.recv_multipart()


def _join(pub: ZmqKvEventPublisher, sub: zmq.Socket) -> int:
    """Publishes probes until the subscriber gets one (ZMQ slow joiner); returns the last seq received."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        pub.publish([_removed(0)])
        if sub.poll(50):
            seq = -1
            while sub.poll(100):
                seq = int.from_bytes(sub.recv_multipart()[1], "big")
            return seq
    raise AssertionError("subscriber never joined")


def _subscriber(ctx: zmq.Context, topic: bytes = b"kv-events") -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.setsockopt(zmq.LINGER, 0)
    return sub


def _replay(ctx: zmq.Context, endpoint: str, start: int) -> list[list[bytes]]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send_multipart([b"", start.to_bytes(8, "big")])
    replies: list[list[bytes]] = []
    while True:
        frames = _recv(dealer)
        replies.append(frames)
        if frames[2] == END_SEQ:
            dealer.close()
            return replies


def _check_live_batches(pub: ZmqKvEventPublisher, sub: zmq.Socket) -> None:
    last = _join(pub, sub)
    for h in (11, 12, 13):
        pub.publish([_removed(h)], ts=100.0 + h)
    for offset, h in enumerate((11, 12, 13), start=1):
        frames = _recv(sub)
        assert len(frames) == 3
        assert frames[0] == b"kv-events"
        assert len(frames[1]) == 8 and int.from_bytes(frames[1], "big") == last + offset
        ts, events, rank = _decode(frames[2])
        assert (ts, rank) == (100.0 + h, 0)
        assert events == [{"type": "BlockRemoved", "block_hashes": [h], "medium": "GPU", "group_idx": 0}]


def test_pub_binds_ipc_and_subscriber_connects(ctx: zmq.Context, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/kv.ipc"
    pub = ZmqKvEventPublisher(_config(endpoint), context=ctx)
    try:
        assert pub.binds and pub.bound_endpoint == endpoint
        sub = _subscriber(ctx)
        sub.connect(endpoint)
        _check_live_batches(pub, sub)
    finally:
        pub.close()


def test_pub_connects_to_bound_subscriber_and_restart_resets_seq(ctx: zmq.Context) -> None:
    sub = _subscriber(ctx)
    sub.bind("tcp://127.0.0.1:*")
    endpoint = sub.getsockopt_string(zmq.LAST_ENDPOINT)
    first = ZmqKvEventPublisher(_config(endpoint), context=ctx)
    assert not first.binds and first.bound_endpoint is None
    _check_live_batches(first, sub)
    # More batches than probes a join can take within TIMEOUT_S, so a restart is visible as a seq drop.
    for _ in range(200):
        first.publish([_removed(5)])
    assert first.drain()
    last_before_restart = -1
    while sub.poll(200):
        last_before_restart = int.from_bytes(sub.recv_multipart()[1], "big")
    assert last_before_restart == first.next_seq - 1
    first.close()

    second = ZmqKvEventPublisher(_config(endpoint), context=ctx)
    try:
        assert second.next_seq == 0
        seen = _join(second, sub)
        assert seen < last_before_restart and seen < second.next_seq
    finally:
        second.close()


def test_topic_filter_and_empty_topic(ctx: zmq.Context, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/kv.ipc"
    pub = ZmqKvEventPublisher(_config(endpoint, topic=""), context=ctx)
    try:
        sub = _subscriber(ctx, b"")
        sub.connect(endpoint)
        _join(pub, sub)
        pub.publish([AllBlocksCleared()])
        frames = _recv(sub)
        assert frames[0] == b""
        assert _decode(frames[2])[1] == [{"type": "AllBlocksCleared"}]
    finally:
        pub.close()


def test_replay_router_serves_buffer_then_end_marker(ctx: zmq.Context, tmp_path: Path) -> None:
    cfg = _config(f"ipc://{tmp_path}/kv.ipc", replay_endpoint="tcp://127.0.0.1:*", buffer_steps=3)
    pub = ZmqKvEventPublisher(cfg, context=ctx)
    try:
        assert pub.publish([]) is None  # empty steps send nothing and take no seq
        for h in range(5):
            assert pub.publish([_removed(h)], ts=float(h)) == h
        assert pub.drain()
        assert pub.replay_bound_endpoint is not None
        replies = _replay(ctx, pub.replay_bound_endpoint, 0)
        assert [len(f) for f in replies] == [4, 4, 4, 4]
        assert [int.from_bytes(f[2], "big") for f in replies[:-1]] == [2, 3, 4]
        assert all(f[0] == b"" and f[1] == b"kv-events" for f in replies[:-1])
        assert [_decode(f[3])[1][0]["block_hashes"] for f in replies[:-1]] == [[2], [3], [4]]
        assert replies[-1] == [b"", b"", b"\xff" * 8, b""]
        assert [int.from_bytes(f[2], "big") for f in _replay(ctx, pub.replay_bound_endpoint, 4)[:-1]] == [4]
        assert len(_replay(ctx, pub.replay_bound_endpoint, 99)) == 1

        bad = ctx.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.connect(pub.replay_bound_endpoint)
        bad.send_multipart([(0).to_bytes(8, "big")])  # no empty delimiter frame
        assert not bad.poll(300)
        assert pub.stats.bad_replay_requests == 1
        bad.close()
    finally:
        pub.close()


def test_dropped_batch_leaves_gap_but_is_replayable(ctx: zmq.Context, tmp_path: Path) -> None:
    cfg = _config(f"ipc://{tmp_path}/kv.ipc", replay_endpoint="tcp://127.0.0.1:*")
    pub = ZmqKvEventPublisher(cfg, context=ctx)
    try:
        sub = _subscriber(ctx)
        sub.connect(pub.endpoint)
        last = _join(pub, sub)
        pub.drop_probability = 1.0
        lost = pub.publish([_removed(41)])
        pub.drop_probability = 0.0
        kept = pub.publish([_removed(42)])
        assert (lost, kept) == (last + 1, last + 2)
        frames = _recv(sub)
        assert int.from_bytes(frames[1], "big") == kept
        assert pub.replay_bound_endpoint is not None
        assert pub.drain()
        replies = _replay(ctx, pub.replay_bound_endpoint, lost)
        assert [_decode(f[3])[1][0]["block_hashes"] for f in replies[:-1]] == [[41], [42]]
        assert pub.stats.dropped == 1
        with pytest.raises(ValueError, match="drop_probability"):
            pub.drop_probability = 1.5
    finally:
        pub.close()


def test_reorder_swaps_adjacent_batches(ctx: zmq.Context, tmp_path: Path) -> None:
    pub = ZmqKvEventPublisher(_config(f"ipc://{tmp_path}/kv.ipc"), context=ctx)
    try:
        sub = _subscriber(ctx)
        sub.connect(pub.endpoint)
        last = _join(pub, sub)
        pub.reorder = True
        pub.publish([_removed(1)])
        pub.publish([_removed(2)])
        order = [int.from_bytes(_recv(sub)[1], "big") for _ in range(2)]
        assert order == [last + 2, last + 1]
        pub.reorder = False
        pub.publish([_removed(3)])
        assert int.from_bytes(_recv(sub)[1], "big") == last + 3
    finally:
        pub.close()


def test_several_publishers_in_one_process_number_independently(ctx: zmq.Context, tmp_path: Path) -> None:
    pubs = [
        ZmqKvEventPublisher(
            _config(f"inproc://kv-events-{i}", replay_endpoint="tcp://127.0.0.1:*"), i, context=ctx
        )
        for i in range(3)
    ]
    try:
        for i, pub in enumerate(pubs):
            for _ in range(i + 1):
                pub.publish([_removed(i)])
        for i, pub in enumerate(pubs):
            assert pub.drain()
            assert pub.replay_bound_endpoint is not None
            replies = _replay(ctx, pub.replay_bound_endpoint, 0)
            assert [int.from_bytes(f[2], "big") for f in replies[:-1]] == list(range(i + 1))
            assert all(_decode(f[3])[2] == i for f in replies[:-1])  # data_parallel_rank
    finally:
        for pub in pubs:
            pub.close()


def test_bind_failure_is_a_clear_error(ctx: zmq.Context, tmp_path: Path) -> None:
    taken = ctx.socket(zmq.ROUTER)
    taken.setsockopt(zmq.LINGER, 0)
    taken.bind("tcp://127.0.0.1:*")
    try:
        cfg = _config(f"ipc://{tmp_path}/kv.ipc", replay_endpoint=taken.getsockopt_string(zmq.LAST_ENDPOINT))
        with pytest.raises(ValueError, match="cannot open KV event sockets"):
            ZmqKvEventPublisher(cfg, context=ctx)
    finally:
        taken.close()


def test_publish_after_close_raises(ctx: zmq.Context, tmp_path: Path) -> None:
    pub = ZmqKvEventPublisher(_config(f"ipc://{tmp_path}/kv.ipc"), context=ctx)
    pub.close()
    pub.close()
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish([_removed(1)])


def test_full_queue_drops_the_batch_but_keeps_its_seq(
    ctx: zmq.Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from brixmesh.engine_sim import kv_events

    release = threading.Event()
    real_encode = kv_events.encode_batch

    def slow_encode(*args: Any) -> bytes:
        release.wait(TIMEOUT_S)  # holds the publisher thread on the first batch
        return real_encode(*args)

    monkeypatch.setattr(kv_events, "encode_batch", slow_encode)
    cfg = _config(f"ipc://{tmp_path}/kv.ipc", replay_endpoint="tcp://127.0.0.1:*", max_queue_size=1)
    pub = ZmqKvEventPublisher(cfg, context=ctx)
    try:
        assert pub.publish([_removed(0)]) == 0  # taken by the thread, which now waits
        deadline = time.monotonic() + TIMEOUT_S
        while pub._queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.publish([_removed(1)]) == 1  # fills the queue
        assert pub.publish([_removed(2)]) == 2  # no room: lost, but its seq is used
        release.set()
        assert pub.drain()
        assert pub.publish([_removed(3)]) == 3
        assert pub.drain()
        assert pub.stats.overflowed == 1
        assert pub.replay_bound_endpoint is not None
        replayed = _replay(ctx, pub.replay_bound_endpoint, 0)[:-1]
        assert [int.from_bytes(f[2], "big") for f in replayed] == [0, 1, 3]
    finally:
        release.set()
        pub.close()
