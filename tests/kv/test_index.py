"""The router's pure prefix index: own hashing, refcounts, removals, clears, matching, speculation."""

from __future__ import annotations

import msgspec

from brixmesh.common.messages import KvAllCleared, KvBlockRemoved, KvBlockStored, KvEventBatch
from brixmesh.kv_index.decode import decode_payload
from brixmesh.router.kv.hashing import block_hashes
from brixmesh.router.kv.index import PrefixIndex
from tests.engine_sim.captures import load_capture
from tests.kv.held_blocks import track_held

B = 4


def stored(hashes: list[int], tokens: list[int], parent: int | None = None, medium: str = "GPU",
           lora: str | None = None) -> KvBlockStored:  # fmt: skip
    return KvBlockStored(hashes, parent, tokens, B, lora, medium)


def batch(pod: str, *events: object, model: str = "m") -> KvEventBatch:
    return KvEventBatch(pod, model, 0, 0.0, list(events))  # type: ignore[arg-type]


PROMPT = list(range(100, 116))  # four blocks


def test_own_hashes_ignore_engine_hashes_and_chain_across_events() -> None:
    index = PrefixIndex()
    index.apply(batch("a", stored([11, 12], PROMPT[:8])))
    index.apply(batch("a", stored([13], PROMPT[8:12], parent=12)))
    index.apply(batch("b", stored([901, 902, 903, 904], PROMPT)))  # other engine hash seed, same tokens
    hashes = index.prompt_hashes(PROMPT, B, "m", None)
    assert hashes == block_hashes(PROMPT, B, "m")
    found = index.match(hashes, B)
    assert {pod: m.blocks for pod, m in found.items()} == {"a": 3, "b": 4}
    assert found["b"].tokens == 16
    assert index.blocks == 4 and index.entries == 7


def test_namespaces_keep_models_and_adapters_apart() -> None:
    index = PrefixIndex()
    index.apply(batch("a", stored([1], PROMPT[:4], lora="lora-a")))
    index.apply(batch("b", stored([1], PROMPT[:4]), model="other"))
    assert index.match(index.prompt_hashes(PROMPT, B, "m", None), B) == {}
    assert set(index.match(index.prompt_hashes(PROMPT, B, "m", "lora-a"), B)) == {"a"}
    assert set(index.match(index.prompt_hashes(PROMPT, B, "other", None), B)) == {"b"}


def test_duplicates_are_refcounted_and_removals_resolve_engine_hashes() -> None:
    index = PrefixIndex()
    index.apply(batch("a", stored([1, 2], PROMPT[:8]), stored([1], PROMPT[:4])))
    hashes = index.prompt_hashes(PROMPT, B, "m", None)
    index.apply(batch("a", KvBlockRemoved([1], "GPU")))
    assert index.match(hashes, B)["a"].blocks == 2  # one copy of block 1 is left
    index.apply(batch("a", KvBlockRemoved([1], "GPU")))
    assert index.match(hashes, B) == {}
    assert index.engine_hashes("a") == {2}
    index.apply(batch("a", KvBlockRemoved([1, 99], "GPU")))
    assert index.counters.unknown_removals == 2


def test_orphans_are_counted_not_indexed() -> None:
    index = PrefixIndex()
    index.apply(batch("a", stored([5], PROMPT[4:8], parent=404)))
    assert index.counters.orphan_blocks == 1 and index.blocks == 0


def test_cleared_and_clear_pod_drop_only_that_pod() -> None:
    index = PrefixIndex()
    index.apply(batch("a", stored([1, 2], PROMPT[:8])))
    index.apply(batch("b", stored([1, 2], PROMPT[:8])))
    index.apply(batch("a", KvAllCleared()))
    hashes = index.prompt_hashes(PROMPT, B, "m", None)
    assert set(index.match(hashes, B)) == {"b"}
    index.clear_pod("b")
    assert index.match(hashes, B) == {} and index.blocks == 0 and index.entries == 0


def test_medium_weights_and_pod_filter() -> None:
    index = PrefixIndex()
    index.apply(batch("a", stored([1, 2], PROMPT[:8], medium="CPU")))
    index.apply(batch("b", stored([1, 2], PROMPT[:8])))
    hashes = index.prompt_hashes(PROMPT, B, "m", None)
    found = index.match(hashes, B)
    assert found["a"].blocks == found["b"].blocks == 2
    assert found["a"].weighted < found["b"].weighted == 2.0
    assert set(index.match(hashes, B, pods=["a"])) == {"a"}


def test_runs_that_diverge_stop_per_pod() -> None:
    index = PrefixIndex()
    index.apply(batch("a", stored([1, 2, 3, 4], PROMPT)))
    index.apply(batch("b", stored([1, 2], PROMPT[:8])))
    other = PROMPT[:8] + [7, 7, 7, 7]
    index.apply(batch("b", stored([9], other[8:12], parent=2)))
    assert {p: m.blocks for p, m in index.match(index.prompt_hashes(PROMPT, B, "m", None), B).items()} == {"a": 4, "b": 2}
    assert {p: m.blocks for p, m in index.match(index.prompt_hashes(other, B, "m", None), B).items()} == {"a": 2, "b": 3}


def test_speculative_entries_expire() -> None:
    now = [0.0]
    index = PrefixIndex(speculative_ttl_s=2.0, clock=lambda: now[0])
    hashes = index.prompt_hashes(PROMPT, B, "m", None)
    index.add_speculative("a", hashes[:3])
    assert index.match(hashes, B)["a"].blocks == 3
    index.apply(batch("a", stored([1], PROMPT[:4])))  # the engine's real event arrives
    now[0] = 2.5
    assert index.match(hashes, B)["a"].blocks == 1
    assert index.speculative_blocks == 0
    index.add_speculative("z", hashes)
    index.clear_pod("z")
    assert set(index.match(hashes, B)) == {"a"}


def test_speculative_entries_live_one_to_two_half_ttl_periods_after_their_last_request() -> None:
    now = [0.0]
    index = PrefixIndex(speculative_ttl_s=2.0, clock=lambda: now[0])
    hashes = index.prompt_hashes(PROMPT, B, "m", None)
    index.add_speculative("a", hashes[:2])
    now[0] = 0.5
    index.add_speculative("a", hashes[:3])
    now[0] = 1.5
    index.add_speculative("a", hashes[:1])  # a rotation: the three go to the previous generation, the first is sent again
    assert index.match(hashes, B)["a"].blocks == 3
    now[0] = 2.6
    index.add_speculative("b", hashes[:1])  # the next rotation expires the second and third
    assert index.match(hashes, B)["a"].blocks == 1 and index.speculative_blocks == 2
    now[0] = 3.7
    index.add_speculative("b", hashes[:1])  # and then the first on "a", last sent at 1.5
    assert "a" not in index.match(hashes, B) and index.speculative_blocks == 1
    index.clear_pod("b")
    assert index.match(hashes, B) == {} and index.speculative_blocks == 0


def test_a_lookup_leaves_expiry_to_the_next_addition_unless_the_router_is_idle() -> None:
    now = [0.0]
    index = PrefixIndex(speculative_ttl_s=2.0, clock=lambda: now[0])
    hashes = index.prompt_hashes(PROMPT, B, "m", None)
    index.add_speculative("a", hashes[:2])
    now[0] = 1.2  # a rotation is due, within the lookup's grace: left to the next addition
    assert index.match(hashes, B)["a"].blocks == 2
    now[0] = 1.6  # past it: the lookup rotates (the two are in the previous generation, still held)
    assert index.match(hashes, B)["a"].blocks == 2
    now[0] = 3.2  # the next rotation is late too: the lookup expires and removes them
    assert index.match(hashes, B) == {} and index.speculative_blocks == 0


def test_expired_entries_are_removed_in_batches_by_later_additions() -> None:
    now = [0.0]
    index = PrefixIndex(speculative_ttl_s=2.0, clock=lambda: now[0])
    chains = [index.prompt_hashes([n, *PROMPT] * 8, B, "m", None) for n in range(40)]
    for hashes in chains:
        index.add_speculative("a", hashes)
    total = index.speculative_blocks
    assert total == sum(len(hashes) for hashes in chains)
    now[0] = 1.0
    index.add_speculative("b", chains[0][:1])
    now[0] = 2.0  # the entries on "a" expire: each addition removes a batch of them
    index.add_speculative("b", chains[0][:1])
    assert 0 < index.speculative_blocks - 1 < total
    index.add_speculative("a", chains[5])  # sent again before its removal: kept
    while index._expired:
        index.add_speculative("b", chains[0][:1])
    assert index.speculative_blocks == 1 + len(chains[5])
    assert index.match(chains[5], B)["a"].blocks == len(chains[5]) and "a" not in index.match(chains[6], B)


def test_capture_index_equals_stored_not_removed() -> None:
    index = PrefixIndex()
    held: dict[int, int] = {}
    for message in load_capture("kv_events_store_remove.jsonl"):
        events = decode_payload(msgspec.msgpack.encode(message["batch"])).events
        index.apply(KvEventBatch("pod", "tiny-llama", message["seq"], 0.0, events))
        track_held(held, events)
    assert index.engine_hashes("pod") == set(held)
    assert index.counters.orphan_blocks == 0


def test_snapshot_assembler_keeps_the_newest_complete_snapshot() -> None:
    from brixmesh.common.messages import KvSnapshot
    from brixmesh.router.kv.follower import SnapshotAssembler

    def part(snapshot_id: int, number: int, parts: int, engine_seq: int) -> KvSnapshot:
        return KvSnapshot("a", "m", 1, engine_seq, snapshot_id, number, parts, 0.0, [stored([number], PROMPT[:4])])

    assembler = SnapshotAssembler()
    assembler.add(part(1, 0, 2, 10))
    assert "a" not in assembler.complete
    assembler.add(part(1, 1, 2, 10))
    assert [p.part for p in assembler.complete["a"]] == [0, 1]
    assembler.add(part(2, 0, 3, 20))  # newer, but never completed
    assembler.add(part(2, 2, 3, 20))
    assert assembler.complete["a"][0].snapshot_id == 1
    assembler.add(part(3, 0, 1, 30))
    assert assembler.complete["a"][0].snapshot_id == 3


def test_prompt_hashes_continue_from_known_leading_blocks() -> None:
    index = PrefixIndex()
    full = index.prompt_hashes(PROMPT, B, "m", "lora", "salt")
    known = index.prompt_hashes(PROMPT[: 2 * B + 1], B, "m", "lora", "salt")
    assert len(known) == 2 and index.prompt_hashes(PROMPT, B, "m", "lora", "salt", known) == full
