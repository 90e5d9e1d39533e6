"""vLLM 0.32 KV block pool and prefix cache, simulated. Pure logic: no I/O, no clock.

Semantics (vLLM v1 ``BlockPool`` / ``KVCacheManager`` / ``FullAttentionManager``):

- ``num_blocks`` physical blocks of ``block_size`` tokens. Block 0 is vLLM's *null block* and is never
  handed out, so ``num_blocks - 1`` blocks hold KV; ``usage = 1 - free / (num_blocks - 1)``, where
  cached-but-unreferenced blocks count as free (this is ``vllm:kv_cache_usage_perc``).
- Blocks are reference-counted. Free blocks sit in one LRU queue; allocation pops from its head. A popped
  block that still carries a hash is evicted from the prefix cache (one ``BlockRemoved`` per block).
- ``free(req)`` walks the request's blocks in reverse (tail first); blocks reaching ref 0 go back to the
  queue: blocks without a hash to the FRONT (reused first), cached blocks to the BACK (kept longest), so
  among one request's cached blocks the tail is evicted first.
- Prefix hits: the longest run of the request's chained block hashes present in the cache, capped at
  ``num_tokens - 1`` tokens (the last token is always computed, so a fully cached prompt still recomputes
  its last block). A hit on a free block takes it off the queue.
- Caching happens in ``allocate_slots``, as in vLLM: after allocating, every block that is full of
  tokens scheduled so far (``min(num_computed + num_new, num_tokens)``) gets its hash and joins the cache;
  each call that caches blocks emits one ``BlockStored`` covering the newly cached run. Blocks filled by
  generated tokens are cached the same way. Identical blocks are NOT de-duplicated: one hash can live in
  two physical blocks (two ``BlockStored``, later two ``BlockRemoved``); lookups return the oldest one.
- ``reset()`` (``POST /reset_prefix_cache``) only succeeds when no block is in use; it drops every hash
  and emits ``AllBlocksCleared``.
- Counters (``vllm:prefix_cache_queries``/``hits``) are in tokens and recorded once per successful
  admission of a request that did a lookup: ``queries += num_tokens``, ``hits += hit tokens``; requests
  that were preempted before count in the ``preempted_*`` counters instead, like vLLM.

Fidelity: checked against vLLM 0.32's own source and against real engines. The event stream is identical
to a live vLLM for sequential requests (``tests/engine_sim/test_kv_vs_real_vllm.py``) and, driven by
``scheduler.Scheduler``, batch for batch identical to recorded concurrent runs with preemption and LoRA,
including the prefix-cache counters (``tests/engine_sim/test_kv_concurrent_recorded.py``).

API (what the scheduler calls, in vLLM's order)::

    mgr = KvCacheManager(num_blocks=64, block_size=32, hasher=BlockHasher("sha256"))
    hit = mgr.get_computed_blocks(req)      # waiting request without blocks: hit tokens (multiple of B)
    req.num_computed_tokens = hit           # the caller records the hit ...
    ok = mgr.allocate_slots(req, n)         # ... then allocates for n new tokens; False = no room
    mgr.cache_full_blocks(req)              # optional: caches computed full blocks (normally a no-op)
    mgr.free(req)                           # finished, aborted or preempted
    mgr.take_events()                       # once per step: [BlockStored|BlockRemoved|AllBlocksCleared]
    mgr.usage, mgr.num_free_blocks, mgr.counters, mgr.reset()

``get_computed_blocks`` must be followed by ``allocate_slots`` for the same request before any other
allocation or free (vLLM's scheduler does exactly that); a stale lookup raises ``RuntimeError``.
``req`` is any object with the attributes of :class:`CacheRequest` (``SimRequest`` has them). Optional
request attributes, read as vLLM reads them: ``kv_cache_report_mode == "full"`` (from ``vllm_xargs``) makes
a lookup with hits re-announce the reused blocks as one ``BlockStored`` with a null parent;
``session_id`` (the request body field) is copied into every ``BlockStored`` the request causes;
``skip_reading_prefix_cache`` (vLLM sets it for ``prompt_logprobs``) makes the lookup return 0 uncounted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from brixmesh.engine_sim.hashing import BlockHasher, block_extra_keys, published_extra_keys
from brixmesh.engine_sim.kv_event_types import (
    FULL_ATTENTION,
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEvent,
)


class CacheRequest(Protocol):
    """What the cache reads from a request. ``all_token_ids`` = prompt + generated tokens so far."""

    @property
    def request_id(self) -> str: ...

    @property
    def all_token_ids(self) -> Sequence[int]: ...

    @property
    def num_computed_tokens(self) -> int: ...

    @property
    def lora_name(self) -> str | None: ...

    @property
    def lora_path(self) -> str | None: ...

    @property
    def lora_int_id(self) -> int | None: ...

    @property
    def cache_salt(self) -> str | None: ...

    @property
    def num_preemptions(self) -> int: ...


@dataclass(slots=True)
class PrefixCacheCounters:
    """Cumulative prefix-cache statistics in tokens (``requests`` in requests)."""

    requests: int = 0
    queries: int = 0
    hits: int = 0
    preempted_requests: int = 0
    preempted_queries: int = 0
    preempted_hits: int = 0


class _Block:
    __slots__ = ("block_hash", "block_id", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: bytes | None = None


@dataclass(slots=True)
class _Lookup:
    request_id: str
    blocks: list[_Block]
    hashes: list[bytes]
    version: int


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KvCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        hasher: BlockHasher,
        enable_prefix_caching: bool = True,
        enable_events: bool = True,
    ) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be at least 2 (block 0 is reserved), got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.hasher = hasher
        self.enable_prefix_caching = enable_prefix_caching
        self.enable_events = enable_events
        self.counters = PrefixCacheCounters()

        self._blocks = [_Block(i) for i in range(num_blocks)]
        # Insertion order is eviction order: the first entry is evicted first.
        self._free: OrderedDict[int, _Block] = OrderedDict((b.block_id, b) for b in self._blocks)
        self._null_block = self._free.popitem(last=False)[1]
        # hash -> {block_id: block}; the first entry answers lookups (vLLM returns the oldest duplicate).
        self._cached: dict[bytes, dict[int, _Block]] = {}
        self._req_blocks: dict[str, list[_Block]] = {}
        self._req_num_cached: dict[str, int] = {}
        self._req_hashes: dict[str, list[bytes]] = {}
        self._lookup: _Lookup | None = None
        self._version = 0
        self._events: list[KvEvent] = []

    # ----- queries -------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks referenced by requests, as ``vllm:kv_cache_usage_perc``."""
        return 1.0 - len(self._free) / (self.num_blocks - 1)

    @property
    def num_cached_blocks(self) -> int:
        """Physical blocks currently holding a cached hash (duplicates counted)."""
        return sum(len(group) for group in self._cached.values())

    def cached_block_hashes(self) -> list[int]:
        """Every cached block hash as KV-event consumers index it (its low 64 bits), for comparing an index
        with the engine's truth."""
        return [int.from_bytes(digest[-8:], "big") for digest in self._cached]

    def block_ids(self, request_id: str) -> list[int]:
        """Physical block ids held by a request, in token order (empty when it holds none)."""
        return [b.block_id for b in self._req_blocks.get(request_id, ())]

    def free_block_ids(self) -> list[int]:
        """Free queue in eviction order (head first)."""
        return list(self._free)

    def cached_prefix_blocks(self, hashes: Sequence[bytes]) -> int:
        """How many leading ``hashes`` the prefix cache holds right now (no lookup state, no counters)."""
        held = 0
        for digest in hashes:
            if not self._cached.get(digest):
                break
            held += 1
        return held

    def take_events(self) -> list[KvEvent]:
        """Events since the last call, oldest first (one engine step's batch)."""
        events, self._events = self._events, []
        return events

    # ----- scheduling ----------------------------------------------------------------------------

    def get_computed_blocks(self, req: CacheRequest) -> int:
        """Prefix-cache hit for a request holding no blocks, in tokens (a multiple of ``block_size``)."""
        if req.request_id in self._req_blocks:
            raise ValueError(
                f"request {req.request_id!r} already holds KV blocks; look up only before admission"
            )
        # vLLM skips the lookup (and its counters) for requests that must recompute, e.g. prompt_logprobs.
        if not self.enable_prefix_caching or getattr(req, "skip_reading_prefix_cache", False):
            return 0
        previous = self._lookup
        # A request that did not fit is looked up again next step: reuse its hashes.
        hashes = previous.hashes if previous is not None and previous.request_id == req.request_id else []
        self._extend_hashes(req, hashes)
        max_blocks = min((len(req.all_token_ids) - 1) // self.block_size, len(hashes))
        hit: list[_Block] = []
        for i in range(max_blocks):
            group = self._cached.get(hashes[i])
            if not group:
                break
            hit.append(next(iter(group.values())))
        self._lookup = _Lookup(req.request_id, hit, hashes, self._version)
        if hit and self.enable_events and getattr(req, "kv_cache_report_mode", "incremental") == "full":
            self._events.append(self._stored_event(req, hashes, 0, len(hit)))
        return len(hit) * self.block_size

    def allocate_slots(self, req: CacheRequest, num_new_tokens: int, num_lookahead_tokens: int = 0) -> bool:
        """Give ``req`` room for ``num_new_tokens`` more tokens after its computed ones.

        Returns False (changing nothing) when the free queue cannot supply the blocks; the caller then
        preempts or stops admitting. On success, blocks full of scheduled tokens are cached.
        """
        if num_new_tokens <= 0:
            raise ValueError(f"num_new_tokens must be positive, got {num_new_tokens}")
        rid = req.request_id
        blocks = self._req_blocks.get(rid)
        lookup = self._take_lookup(req) if blocks is None else None
        hit = lookup.blocks if lookup is not None else []
        num_computed = req.num_computed_tokens
        if blocks is None and num_computed != len(hit) * self.block_size:
            if lookup is None:
                raise ValueError(
                    f"request {rid!r} holds no KV blocks but has {num_computed} computed tokens; call "
                    "get_computed_blocks() right before allocate_slots()"
                )
            raise ValueError(
                f"request {rid!r} has {num_computed} computed tokens but its prefix-cache hit covers "
                f"{len(hit) * self.block_size}; set num_computed_tokens to get_computed_blocks()'s result"
            )
        held = len(blocks) if blocks is not None else len(hit)
        num_required = _cdiv(num_computed + num_new_tokens + num_lookahead_tokens, self.block_size)
        num_new_blocks = max(0, num_required - held)
        # A hit block sitting in the free queue stops being free once this request takes it.
        num_evictable_hits = sum(1 for b in hit if b.ref_cnt == 0)
        if num_new_blocks + num_evictable_hits > len(self._free):
            self._lookup = lookup  # unchanged pool: the retry next step reuses its hashes
            return False

        if blocks is None:
            for block in hit:
                if block.ref_cnt == 0:
                    del self._free[block.block_id]
                block.ref_cnt += 1
            blocks = self._req_blocks[rid] = list(hit)
            self._req_num_cached[rid] = len(hit)
            self._req_hashes[rid] = lookup.hashes if lookup is not None else []
        for _ in range(num_new_blocks):
            block = self._free.popitem(last=False)[1]
            self._evict(block)
            block.ref_cnt = 1
            blocks.append(block)
        self._version += 1

        if self.enable_prefix_caching:
            self._cache_blocks(req, blocks, min(num_computed + num_new_tokens, len(req.all_token_ids)))
            if lookup is not None:
                self._record_lookup(req, len(hit) * self.block_size)
        return True

    def cache_full_blocks(self, req: CacheRequest) -> None:
        """Cache blocks full of computed tokens not cached yet (``allocate_slots`` normally did already)."""
        blocks = self._req_blocks.get(req.request_id)
        if blocks is None or not self.enable_prefix_caching:
            return
        self._cache_blocks(req, blocks, min(req.num_computed_tokens, len(req.all_token_ids)))

    def free(self, req: CacheRequest) -> None:
        """Release a request's blocks (finished, aborted or preempted); unknown requests are a no-op."""
        rid = req.request_id
        if self._lookup is not None and self._lookup.request_id == rid:
            self._lookup = None
        blocks = self._req_blocks.pop(rid, None)
        self._req_num_cached.pop(rid, None)
        self._req_hashes.pop(rid, None)
        if not blocks:
            return
        ordered = blocks[::-1]
        for block in ordered:
            block.ref_cnt -= 1
        released = [b for b in ordered if b.ref_cnt == 0]
        fresh = [b for b in released if b.block_hash is None]
        for block in reversed(fresh):
            self._free[block.block_id] = block
            self._free.move_to_end(block.block_id, last=False)
        for block in released:
            if block.block_hash is not None:
                self._free[block.block_id] = block
        self._version += 1

    def reset(self) -> bool:
        """Drop every cached hash; refused (False) while any block is in use."""
        if len(self._free) != self.num_blocks - 1:
            return False
        self._cached.clear()
        for block in self._blocks:
            block.block_hash = None
        self._lookup = None
        self._version += 1
        if self.enable_events:
            self._events.append(AllBlocksCleared())
        return True

    # ----- internals -----------------------------------------------------------------------------

    def _take_lookup(self, req: CacheRequest) -> _Lookup | None:
        lookup, self._lookup = self._lookup, None
        if lookup is None or lookup.request_id != req.request_id:
            return None
        if lookup.version != self._version:
            raise RuntimeError(
                f"stale prefix-cache lookup for request {req.request_id!r}: the pool changed between "
                "get_computed_blocks() and allocate_slots()"
            )
        return lookup

    def _extend_hashes(self, req: CacheRequest, hashes: list[bytes]) -> None:
        tokens = req.all_token_ids
        bs = self.block_size
        done = len(hashes)
        if (done + 1) * bs > len(tokens):
            return
        full_end = len(tokens) // bs * bs
        hashes.extend(
            self.hasher.hash_blocks(
                tokens[done * bs : full_end],
                bs,
                parent=hashes[-1] if hashes else None,
                lora_name=req.lora_name,
                lora_path=req.lora_path,
                cache_salt=req.cache_salt,
                first_block_index=done,
            )
        )

    def _cache_blocks(self, req: CacheRequest, blocks: list[_Block], num_tokens: int) -> None:
        rid = req.request_id
        num_cached = self._req_num_cached[rid]
        num_full = min(num_tokens // self.block_size, len(blocks))
        if num_full <= num_cached:
            return
        hashes = self._req_hashes[rid]
        self._extend_hashes(req, hashes)
        for i in range(num_cached, num_full):
            block = blocks[i]
            digest = hashes[i]
            block.block_hash = digest
            group = self._cached.get(digest)
            if group is None:
                self._cached[digest] = {block.block_id: block}
            else:
                group[block.block_id] = block
        self._req_num_cached[rid] = num_full
        if self.enable_events:
            self._events.append(self._stored_event(req, hashes, num_cached, num_full))

    def _stored_event(self, req: CacheRequest, hashes: list[bytes], first: int, end: int) -> BlockStored:
        """``BlockStored`` for blocks ``first .. end-1`` of a request (parent: block ``first - 1``)."""
        bs = self.block_size
        lora_name = req.lora_name
        external = self.hasher.external
        return BlockStored(
            block_hashes=[external(hashes[i]) for i in range(first, end)],
            parent_block_hash=external(hashes[first - 1]) if first else None,
            token_ids=list(req.all_token_ids[first * bs : end * bs]),
            block_size=bs,
            lora_id=req.lora_int_id if lora_name is not None else None,
            medium=MEDIUM_GPU,
            lora_name=lora_name,
            extra_keys=[
                published_extra_keys(block_extra_keys(i, lora_name, req.lora_path, req.cache_salt))
                for i in range(first, end)
            ],
            group_idx=0,
            kv_cache_spec_kind=FULL_ATTENTION,
            session_id=getattr(req, "session_id", None),
        )

    def _evict(self, block: _Block) -> None:
        digest = block.block_hash
        if digest is None:
            return
        block.block_hash = None
        group = self._cached.get(digest)
        if group is None or group.pop(block.block_id, None) is None:
            return
        if not group:
            del self._cached[digest]
        if self.enable_events:
            self._events.append(
                BlockRemoved(block_hashes=[self.hasher.external(digest)], medium=MEDIUM_GPU, group_idx=0)
            )

    def _record_lookup(self, req: CacheRequest, hit_tokens: int) -> None:
        c = self.counters
        if req.num_preemptions > 0:
            c.preempted_requests += 1
            c.preempted_queries += len(req.all_token_ids)
            c.preempted_hits += hit_tokens
        else:
            c.requests += 1
            c.queries += len(req.all_token_ids)
            c.hits += hit_tokens
