"""Replays the request stream implied by a real vLLM 0.32 capture through the simulated cache (64 x 32).

Each ``BlockStored`` without a parent in the capture is one admission; its token sequence is the chain of
full blocks the capture later grows from that first block. The simulated cache gets those admissions in
capture order with a few running at once (oldest released first when more are running or the pool is
full) and must produce events with the capture's qualitative shape: the same hashes, stores and
evictions, single-hash removals, duplicate stores and removes, consistent parents.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_event_types import BlockRemoved, BlockStored, KvEvent

from tests.engine_sim.cache_request import Req
from tests.engine_sim.captures import capture_events

BLOCK = 32
NUM_BLOCKS = 64
CONCURRENCY = 8


def _implied_admissions(events: list[dict[str, Any]]) -> list[list[int]]:
    tokens_upto: dict[int, list[int]] = {}
    children: dict[int, list[int]] = {}
    roots: list[int] = []
    for event in events:
        if event["type"] != "BlockStored":
            continue
        parent = event["parent_block_hash"]
        if parent is None:
            roots.append(event["block_hashes"][0])
        prefix = [] if parent is None else tokens_upto[parent]
        for i, h in enumerate(event["block_hashes"]):
            prefix = prefix + event["token_ids"][i * BLOCK : (i + 1) * BLOCK]
            if h not in tokens_upto:
                tokens_upto[h] = prefix
                if parent is not None:
                    children.setdefault(parent, []).append(h)
            parent = h

    def longest_chain(h: int) -> list[int]:
        while children.get(h):
            h = children[h][0]
        return tokens_upto[h]

    return [longest_chain(root) for root in roots]


def _replay(admissions: list[list[int]]) -> list[KvEvent]:
    mgr = KvCacheManager(NUM_BLOCKS, BLOCK, BlockHasher("sha256", environ={"PYTHONHASHSEED": "0"}))
    running: list[Req] = []
    events: list[KvEvent] = []
    for i, tokens in enumerate(admissions):
        req = Req(f"r{i}", list(tokens))
        while True:
            req.num_computed_tokens = mgr.get_computed_blocks(req)
            if mgr.allocate_slots(req, len(tokens) - req.num_computed_tokens):
                break
            req.num_computed_tokens = 0
            mgr.free(running.pop(0))
        running.append(req)
        if len(running) > CONCURRENCY:
            mgr.free(running.pop(0))
        assert mgr.usage <= 1.0
        events.extend(mgr.take_events())
    return events


def test_replayed_capture_has_the_real_event_shape() -> None:
    captured = capture_events("kv_events_store_remove.jsonl")
    admissions = _implied_admissions(captured)
    assert len(admissions) == 147 and all(len(t) % BLOCK == 0 for t in admissions)

    events = _replay(admissions)
    stores: Counter[int | bytes] = Counter()
    removes: Counter[int | bytes] = Counter()
    live: Counter[int | bytes] = Counter()
    for event in events:
        if isinstance(event, BlockStored):
            assert len(event.token_ids) == BLOCK * len(event.block_hashes)
            assert event.parent_block_hash is None or live[event.parent_block_hash] > 0
            stores.update(event.block_hashes)
            live.update(event.block_hashes)
        elif isinstance(event, BlockRemoved):
            [h] = event.block_hashes
            assert live[h] > 0, "removed a hash that is not stored"
            live[h] -= 1
            removes[h] += 1

    captured_hashes = {h for e in captured if e["type"] == "BlockStored" for h in e["block_hashes"]}
    assert set(stores) <= captured_hashes  # same hashing, same chains
    assert sum(stores.values()) > NUM_BLOCKS and sum(removes.values()) > 0  # eviction under pressure
    assert any(n > 1 for n in stores.values())  # duplicate stores, as in the capture
    assert any(n > 1 for n in removes.values())  # ... and duplicate removes
    assert sum(live.values()) <= NUM_BLOCKS - 1
