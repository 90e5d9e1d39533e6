from __future__ import annotations

from dataclasses import dataclass

import pytest
from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_event_types import AllBlocksCleared, BlockRemoved, BlockStored

from tests.engine_sim.cache_request import Req

BS = 4


def _mgr(num_blocks: int = 9, **kw: bool) -> KvCacheManager:
    return KvCacheManager(num_blocks, BS, BlockHasher("sha256", seed="0", use_int_hashes=True), **kw)


def _admit(mgr: KvCacheManager, req: Req) -> bool:
    """What the scheduler does for a waiting request: lookup, record the hit, allocate the rest."""
    hit = mgr.get_computed_blocks(req)
    req.num_computed_tokens = hit
    if not mgr.allocate_slots(req, len(req.all_token_ids) - hit):
        req.num_computed_tokens = 0
        return False
    req.num_computed_tokens = len(req.all_token_ids)
    return True


def _decode(mgr: KvCacheManager, req: Req, token: int) -> bool:
    """One sampled token becomes part of the sequence and is computed in the next step."""
    req.all_token_ids.append(token)
    ok = mgr.allocate_slots(req, 1)
    if ok:
        req.num_computed_tokens += 1
    return ok


def _ext(mgr: KvCacheManager, tokens: list[int], **kw: str) -> list[int | bytes]:
    return [mgr.hasher.external(d) for d in mgr.hasher.hash_blocks(tokens, BS, **kw)]


def _stored(events: list) -> list[BlockStored]:
    return [e for e in events if isinstance(e, BlockStored)]


def _removed_hashes(events: list) -> list[int | bytes]:
    return [h for e in events if isinstance(e, BlockRemoved) for h in e.block_hashes]


# ----- capacity and usage ----------------------------------------------------------------------------


def test_null_block_reserved_and_usage_counts_referenced_blocks_only() -> None:
    mgr = _mgr(9)
    assert mgr.num_free_blocks == 8 and mgr.usage == 0.0
    assert 0 not in mgr.free_block_ids()
    a = Req("a", list(range(10)))  # 3 blocks (2 full + 1 partial)
    assert _admit(mgr, a)
    assert mgr.block_ids("a") == [1, 2, 3]
    assert mgr.usage == pytest.approx(3 / 8)
    mgr.free(a)
    # Cached-but-unreferenced blocks count as free.
    assert mgr.usage == 0.0 and mgr.num_free_blocks == 8 and mgr.num_cached_blocks == 2


def test_allocation_fails_without_side_effects_when_full() -> None:
    mgr = _mgr(5)
    assert _admit(mgr, Req("a", list(range(12))))  # 3 of 4 usable blocks
    b = Req("b", list(range(100, 108)))
    assert not _admit(mgr, b)
    assert mgr.block_ids("b") == [] and mgr.num_free_blocks == 1
    assert _stored(mgr.take_events())[0].block_hashes == _ext(mgr, list(range(12)))


def test_validation_errors() -> None:
    mgr = _mgr()
    a = Req("a", list(range(8)))
    with pytest.raises(ValueError, match="num_new_tokens must be positive"):
        mgr.allocate_slots(a, 0)
    a.num_computed_tokens = 4
    with pytest.raises(ValueError, match="holds no KV blocks but has 4 computed tokens"):
        mgr.allocate_slots(a, 4)
    mgr.get_computed_blocks(a)
    with pytest.raises(ValueError, match="computed tokens but its prefix-cache hit covers 0"):
        mgr.allocate_slots(a, 4)
    a.num_computed_tokens = 0
    assert _admit(mgr, a)
    with pytest.raises(ValueError, match="already holds KV blocks"):
        mgr.get_computed_blocks(a)
    with pytest.raises(ValueError, match="at least 2"):
        KvCacheManager(1, BS, mgr.hasher)


# ----- prefix hits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt_len", "expected_hit"), [(3, 0), (4, 0), (5, 4), (8, 4), (9, 8), (12, 8)])
def test_hit_is_full_blocks_and_never_the_last_token(prompt_len: int, expected_hit: int) -> None:
    mgr = _mgr(20)
    tokens = list(range(prompt_len))
    first = Req("first", list(tokens))
    assert _admit(mgr, first)
    mgr.free(first)
    assert mgr.get_computed_blocks(Req("again", list(tokens))) == expected_hit


def test_hit_stops_at_first_missing_block_and_on_any_token_change() -> None:
    mgr = _mgr(20)
    base = list(range(16))
    assert _admit(mgr, Req("a", base + [99]))
    assert mgr.get_computed_blocks(Req("b", base[:8] + [7, 7, 7, 7] + base[12:] + [1])) == 8
    assert mgr.get_computed_blocks(Req("c", [42] + base[1:] + [1])) == 0


def test_hit_on_free_block_takes_it_off_the_queue_and_counts_as_allocation() -> None:
    mgr = _mgr(5)  # 4 usable blocks
    a = Req("a", list(range(9)))  # blocks: 2 full + 1 partial
    assert _admit(mgr, a)
    mgr.free(a)
    b = Req("b", list(range(8)) + [50, 51, 52, 53, 54])  # hits 2 blocks, needs 2 more
    assert mgr.free_block_ids() == [3, 4, 2, 1]
    assert _admit(mgr, b)
    assert mgr.block_ids("b") == [1, 2, 3, 4] and mgr.num_free_blocks == 0
    assert mgr.usage == 1.0
    c = Req("c", list(range(8)) + [60])
    # The shared blocks are in use (no extra allocation) but the third block has no room.
    assert mgr.get_computed_blocks(c) == 8
    c.num_computed_tokens = 8
    assert not mgr.allocate_slots(c, 1)


def test_refcounts_keep_shared_blocks_until_last_user_frees() -> None:
    mgr = _mgr(20)
    a = Req("a", list(range(9)))
    b = Req("b", list(range(9)))
    assert _admit(mgr, a) and _admit(mgr, b)
    shared = mgr.block_ids("a")[:2]
    assert mgr.block_ids("b")[:2] == shared
    mgr.free(a)
    assert not set(shared) & set(mgr.free_block_ids())
    mgr.free(b)
    assert set(shared) <= set(mgr.free_block_ids())


# ----- eviction order --------------------------------------------------------------------------------


def test_free_puts_uncached_blocks_first_and_cached_tail_blocks_before_head() -> None:
    mgr = _mgr(9)
    a = Req("a", list(range(10)))  # blocks 1,2 cached, 3 partial
    assert _admit(mgr, a)
    assert mgr.block_ids("a") == [1, 2, 3]
    mgr.free(a)
    assert mgr.free_block_ids() == [3, 4, 5, 6, 7, 8, 2, 1]


def test_eviction_pops_lru_head_and_emits_one_removed_per_block() -> None:
    mgr = _mgr(5)  # 4 usable
    old = Req("old", list(range(8)) + [0])  # 2 cached blocks + 1 partial
    assert _admit(mgr, old)
    old_hashes = _ext(mgr, list(range(8)))
    mgr.free(old)
    mgr.take_events()
    new = Req("new", list(range(100, 116)))  # needs all 4 blocks: evicts tail then head
    assert _admit(mgr, new)
    events = mgr.take_events()
    assert [type(e) for e in events] == [BlockRemoved, BlockRemoved, BlockStored]
    assert _removed_hashes(events) == [old_hashes[1], old_hashes[0]]
    assert all(len(e.block_hashes) == 1 for e in events if isinstance(e, BlockRemoved))
    assert not mgr.get_computed_blocks(Req("probe", list(range(8)) + [0]))


def test_least_recently_freed_request_is_evicted_first() -> None:
    mgr = _mgr(9)
    a, b = Req("a", list(range(9))), Req("b", list(range(50, 59)))
    assert _admit(mgr, a) and _admit(mgr, b)
    mgr.free(a)
    mgr.free(b)
    mgr.take_events()
    assert _admit(
        mgr, Req("c", list(range(200, 224)))
    )  # 6 blocks: the 4 uncached ones, then a's tail and head
    evicted = _removed_hashes(mgr.take_events())
    assert evicted == [_ext(mgr, list(range(8)))[1], _ext(mgr, list(range(8)))[0]]


# ----- events ------------------------------------------------------------------------------------------


def test_block_stored_fields_and_generated_tokens_are_cached() -> None:
    mgr = _mgr(20)
    a = Req("a", list(range(6)))
    assert _admit(mgr, a)
    [first] = mgr.take_events()
    assert isinstance(first, BlockStored)
    assert first.block_hashes == _ext(mgr, list(range(4)))
    assert first.parent_block_hash is None
    assert first.token_ids == [0, 1, 2, 3]
    assert (first.block_size, first.lora_id, first.medium, first.lora_name) == (BS, None, "GPU", None)
    assert (first.extra_keys, first.group_idx, first.kv_cache_spec_kind) == ([None], 0, "full_attention")

    assert _decode(mgr, a, 100) and mgr.take_events() == []  # 7 tokens: block 2 not full yet
    assert _decode(mgr, a, 101)
    [second] = mgr.take_events()
    assert second.token_ids == [4, 5, 100, 101]
    assert second.parent_block_hash == first.block_hashes[0]
    assert second.block_hashes == _ext(mgr, [0, 1, 2, 3, 4, 5, 100, 101])[1:]
    mgr.free(a)
    # The generated block is hittable by a request that continues the conversation.
    assert mgr.get_computed_blocks(Req("b", [0, 1, 2, 3, 4, 5, 100, 101, 7])) == 8


def test_one_stored_event_per_allocation_covering_the_new_run() -> None:
    mgr = _mgr(20)
    a = Req("a", list(range(13)))
    hit = mgr.get_computed_blocks(a)
    a.num_computed_tokens = hit
    assert mgr.allocate_slots(a, 6)  # chunk 1: tokens 0-5 -> block 0 full
    a.num_computed_tokens = 6
    assert mgr.allocate_slots(a, 7)  # chunk 2: tokens 6-12 -> blocks 1, 2 full
    first, second = _stored(mgr.take_events())
    assert first.token_ids == list(range(4)) and first.parent_block_hash is None
    assert second.token_ids == list(range(4, 12)) and len(second.block_hashes) == 2
    assert second.parent_block_hash == first.block_hashes[0]


def test_duplicate_blocks_are_stored_and_removed_twice() -> None:
    mgr = _mgr(6)  # 5 usable
    prompt = list(range(8))  # exactly 2 blocks: a repeat can only hit the first one
    a, b = Req("a", list(prompt)), Req("b", list(prompt))
    assert _admit(mgr, a)
    assert mgr.get_computed_blocks(Req("peek", list(prompt))) == 4
    assert _admit(mgr, b)
    hashes = _ext(mgr, prompt)
    stored = _stored(mgr.take_events())
    assert [s.block_hashes for s in stored] == [hashes, hashes[1:]]
    assert stored[1].parent_block_hash == hashes[0]
    assert mgr.block_ids("a")[0] == mgr.block_ids("b")[0]
    assert mgr.block_ids("a")[1] != mgr.block_ids("b")[1]
    assert mgr.num_cached_blocks == 3
    mgr.free(a)
    mgr.free(b)
    assert _admit(mgr, Req("c", list(range(100, 120))))  # all 5 blocks
    removed = _removed_hashes(mgr.take_events())
    assert sorted(removed, key=str) == sorted([hashes[1], hashes[1], hashes[0]], key=str)
    assert mgr.num_cached_blocks == 5


def test_lookup_prefers_the_oldest_duplicate() -> None:
    mgr = _mgr(10)
    prompt = list(range(8))
    a, b = Req("a", list(prompt)), Req("b", list(prompt))
    assert _admit(mgr, a) and _admit(mgr, b)
    oldest = mgr.block_ids("a")[1]
    c = Req("c", prompt + [9])
    assert _admit(mgr, c)
    assert mgr.block_ids("c")[1] == oldest


def test_lora_blocks_carry_adapter_and_never_hit_base_blocks() -> None:
    mgr = _mgr(20)
    prompt = list(range(9))
    assert _admit(mgr, Req("base", list(prompt)))
    lora = Req("l", list(prompt), lora_name="static-a", lora_path="/adapters/a", lora_int_id=1)
    assert mgr.get_computed_blocks(lora) == 0
    lora.num_computed_tokens = 0
    assert mgr.allocate_slots(lora, 9)
    stored = _stored(mgr.take_events())[-1]
    assert (stored.lora_id, stored.lora_name) == (1, "static-a")
    assert stored.extra_keys == [["static-a"], ["static-a"]]
    assert stored.block_hashes == _ext(mgr, prompt[:8], lora_name="static-a", lora_path="/adapters/a")
    other_path = Req("l2", list(prompt), lora_name="static-a", lora_path="/elsewhere", lora_int_id=1)
    assert mgr.get_computed_blocks(other_path) == 0


def test_cache_salt_isolates_and_is_published_on_first_block() -> None:
    mgr = _mgr(20)
    salted = Req("s", list(range(9)), cache_salt="tenant-1")
    assert _admit(mgr, salted)
    stored = _stored(mgr.take_events())[0]
    assert stored.extra_keys == [["tenant-1"], None]
    assert mgr.get_computed_blocks(Req("plain", list(range(9)))) == 0
    assert mgr.get_computed_blocks(Req("same", list(range(9)), cache_salt="tenant-1")) == 8


def test_reset_refused_while_in_use_then_clears_everything() -> None:
    mgr = _mgr(9)
    a = Req("a", list(range(9)))
    assert _admit(mgr, a)
    mgr.take_events()
    assert not mgr.reset() and mgr.take_events() == []
    mgr.free(a)
    assert mgr.reset()
    assert mgr.take_events() == [AllBlocksCleared()]
    assert mgr.num_cached_blocks == 0
    assert mgr.get_computed_blocks(Req("b", list(range(9)))) == 0
    # Cleared blocks are reused without BlockRemoved.
    assert _admit(mgr, Req("c", list(range(100, 132))))
    assert _removed_hashes(mgr.take_events()) == []


# ----- counters and protocol errors -----------------------------------------------------------------


def test_counters_count_tokens_once_per_admission_and_split_preempted() -> None:
    mgr = _mgr(5)
    a = Req("a", list(range(9)))
    assert _admit(mgr, a)
    mgr.free(a)
    big = Req("big", list(range(9)) + list(range(100, 107)))  # 16 tokens: hit 8, needs 2 more + 2 evictable
    blocker = Req("blocker", list(range(300, 308)))
    assert _admit(mgr, blocker)  # leaves 2 free (both cached blocks of a)
    assert not _admit(mgr, big)  # a failed admission records nothing
    assert (mgr.counters.requests, mgr.counters.queries, mgr.counters.hits) == (2, 17, 0)
    mgr.free(blocker)
    assert _admit(mgr, big)
    assert (mgr.counters.requests, mgr.counters.queries, mgr.counters.hits) == (3, 33, 8)
    mgr.free(big)
    big.num_preemptions = 1
    big.num_computed_tokens = 0
    assert _admit(mgr, big)
    c = mgr.counters
    assert (c.requests, c.queries, c.hits) == (3, 33, 8)
    assert (c.preempted_requests, c.preempted_queries, c.preempted_hits) == (1, 16, 12)


def test_stale_lookup_is_rejected() -> None:
    mgr = _mgr(20)
    warm = Req("warm", list(range(9)))
    assert _admit(mgr, warm)
    mgr.free(warm)
    other = Req("other", list(range(50, 60)))
    assert _admit(mgr, other)
    a = Req("a", list(range(9)))
    a.num_computed_tokens = mgr.get_computed_blocks(a)
    mgr.free(other)
    with pytest.raises(RuntimeError, match="stale prefix-cache lookup"):
        mgr.allocate_slots(a, 1)
    # A lookup replaced by another request's lookup is simply gone.
    a.num_computed_tokens = mgr.get_computed_blocks(a)
    mgr.get_computed_blocks(Req("b", list(range(9))))
    with pytest.raises(ValueError, match="call get_computed_blocks"):
        mgr.allocate_slots(a, 1)


def test_prefix_caching_disabled_allocates_without_hashes_or_events() -> None:
    mgr = _mgr(9, enable_prefix_caching=False)
    a = Req("a", list(range(9)))
    assert _admit(mgr, a)
    mgr.free(a)
    assert mgr.get_computed_blocks(Req("b", list(range(9)))) == 0
    assert mgr.take_events() == [] and mgr.num_cached_blocks == 0
    assert mgr.counters.queries == 0


def test_events_can_be_disabled_while_caching() -> None:
    mgr = _mgr(9, enable_events=False)
    a = Req("a", list(range(9)))
    assert _admit(mgr, a)
    mgr.free(a)
    assert mgr.get_computed_blocks(Req("b", list(range(9)))) == 8
    assert mgr.take_events() == []


@dataclass
class FullReportReq(Req):
    kv_cache_report_mode: str = "full"


def test_full_report_mode_reannounces_reused_blocks_with_null_parent() -> None:
    mgr = _mgr(20)
    assert _admit(mgr, Req("a", list(range(13))))
    first = _stored(mgr.take_events())[0]
    assert _admit(mgr, Req("quiet", list(range(13))))
    assert mgr.take_events() == []  # hits are silent by default
    assert _admit(mgr, FullReportReq("loud", list(range(13))))
    [announced] = mgr.take_events()
    assert isinstance(announced, BlockStored)
    assert announced.block_hashes == first.block_hashes
    assert announced.parent_block_hash is None and announced.token_ids == list(range(12))


@dataclass
class SessionReq(Req):
    session_id: str | None = "conversation-7"


def test_session_id_is_copied_into_stored_events() -> None:
    mgr = _mgr(20)
    assert _admit(mgr, SessionReq("s", list(range(9))))
    assert _admit(mgr, Req("plain", list(range(50, 59))))
    with_session, without = _stored(mgr.take_events())
    assert (with_session.session_id, without.session_id) == ("conversation-7", None)


@dataclass
class PromptLogprobsReq(Req):
    skip_reading_prefix_cache: bool = True


def test_requests_that_skip_reading_the_cache_get_no_hit_and_are_not_counted() -> None:
    mgr = _mgr(20)
    assert _admit(mgr, Req("a", list(range(9))))
    queries = mgr.counters.queries
    skipper = PromptLogprobsReq("p", list(range(9)))
    assert mgr.get_computed_blocks(skipper) == 0
    assert _admit(mgr, skipper)
    assert mgr.counters.queries == queries
    # Its blocks are still cached (a duplicate of a's), reading is what it skips.
    assert _stored(mgr.take_events())[-1].block_hashes == _ext(mgr, list(range(8)))
