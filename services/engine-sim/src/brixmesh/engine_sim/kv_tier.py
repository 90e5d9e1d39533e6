"""The simulator's use of the KV tier, switched on by the same flag as real vLLM's connector::

    --kv-transfer-config '{"kv_connector": "BrixTierConnector", "kv_role": "kv_both",
                           "kv_connector_extra_config": {"tier_nodes": ["127.0.0.1:7390"]}}'

What it does, in vLLM's connector order:

- **Load.** A new request first asks the tier how many leading full blocks of its prompt it holds (by the
  engine's own chained block hashes), then gets those beyond the engine's own prefix-cache hit: real
  bytes, the modelled size of a block's KV (``kv_bytes_per_token * block_size`` of the model profile).
  Meanwhile the request waits, deferred, as vLLM's does for remote KV; the fetch time is the wall time of
  the real transfer. At admission the fetched blocks count as external tokens (when the engine's own hit
  still reaches them; otherwise all is computed): loaded, not computed (the step costs only the rest of
  the prompt), and reported as ``external_kv_transfer``. A tier that is slow or down only costs up to
  ``load_timeout_ms``, then the prompt is computed; beyond ``max_pending_loads`` loads in flight a new
  request computes at once. ``kv_connector_extra_config`` is read by the vLLM connector's own parser.
- **Save.** A finished request's full blocks (prompt and output) beyond the run the tier already holds
  are put, in the background with a bounded number of saves in flight (beyond that a save is skipped:
  the tier is a cache).
- **Events.** Saved blocks are announced on the engine's KV event stream as ``BlockStored`` with medium
  ``CPU``, so routers count them, below GPU blocks. When a lookup shows the tier lost announced blocks, or
  the announced set outgrows its bound, ``BlockRemoved`` (medium ``CPU``) withdraws them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from brixmesh.common.kv_tier import MISSING, KvTierClient, TierError, TierNamespace
from brixmesh.common.kv_tier_plan import ConnectorSettings, parse_settings

from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_event_types import BlockRemoved, BlockStored
from brixmesh.engine_sim.request import SimRequest

log = logging.getLogger(__name__)

TIER_CONNECTOR = "BrixTierConnector"
MEDIUM_CPU = "CPU"
MAX_ANNOUNCED_BLOCKS = 65536


def parse_tier_config(raw: str | None) -> ConnectorSettings | None:
    """The tier connector's settings in a ``--kv-transfer-config`` JSON (read as the vLLM connector reads
    them), or None when it names another connector (or none); ``ValueError`` with a one-line message."""
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"--kv-transfer-config is not JSON: {error}") from None
    if not isinstance(config, dict) or config.get("kv_connector") != TIER_CONNECTOR:
        return None
    return parse_settings(config.get("kv_connector_extra_config"))


class EventSink(Protocol):
    def publish(self, events: list) -> None: ...


@dataclass(slots=True)
class TierCounters:
    lookups: int = 0
    loaded_blocks: int = 0
    load_seconds: float = 0.0
    saved_blocks: int = 0
    skipped_saves: int = 0
    skipped_loads: int = 0
    load_timeouts: int = 0


class SimKvTier:
    """One simulated engine's tier connector (the engine polls its deferred requests, so none waits long)."""

    def __init__(
        self,
        config: ConnectorSettings,
        model: str,
        block_size: int,
        block_bytes: int,
        hasher: BlockHasher,
        cached_prefix_blocks: Callable[[list[bytes]], int],
        now: Callable[[], float],
        events: EventSink | None,
    ) -> None:
        self.config = config
        self.model = model
        self.block_size = block_size
        self.hasher = hasher
        self.client = KvTierClient(
            config.tier_nodes, timeout_s=config.load_timeout_s, retry_after_s=config.retry_after_s
        )
        self._now = now
        self._cached_prefix_blocks = cached_prefix_blocks
        self._events = events
        self._block = memoryview(bytearray(block_bytes))
        """Every saved block's modelled bytes, and where every loaded block lands: the content does not
        matter to a simulator, the bytes moved do."""
        self._saves: set[asyncio.Task[None]] = set()
        self._loads: set[asyncio.Task[None]] = set()
        self._announced: OrderedDict[bytes, None] = OrderedDict()
        self.counters = TierCounters()

    def namespace(self, request: SimRequest) -> TierNamespace:
        return TierNamespace(
            self.model, "bfloat16", self.block_size, 0, request.lora_name or "", request.cache_salt or ""
        )

    def hashes(self, request: SimRequest, tokens: list[int]) -> list[bytes]:
        full = len(tokens) // self.block_size * self.block_size
        return self.hasher.hash_blocks(
            tokens[:full], self.block_size, parent=None, lora_name=request.lora_name,
            lora_path=request.lora_path, cache_salt=request.cache_salt, first_block_index=0,
        )  # fmt: skip

    # --- load ---------------------------------------------------------------------------------------------

    def submitted(self, request: SimRequest) -> None:
        """Defers a new request until its blocks are fetched from the tier (or the tier gave up)."""
        if request.remote_prefill or request.num_preemptions:
            return
        if len(self._loads) >= self.config.max_pending_loads:
            self.counters.skipped_loads += 1  # as the vLLM connector: compute rather than queue
            return
        request.ready_time = math.inf
        task = asyncio.get_running_loop().create_task(self._load(request))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _load(self, request: SimRequest) -> None:
        try:
            usable = (len(request.prompt_token_ids) - 1) // self.block_size  # the last token is computed
            hashes = self.hashes(request, request.prompt_token_ids)[:usable]
            if hashes:
                await self._fetch(request, hashes)
        except Exception:
            log.exception("tier load failed; the prompt is computed")
        finally:
            request.ready_time = self._now()

    async def _fetch(self, request: SimRequest, hashes: list[bytes]) -> None:
        namespace = self.namespace(request)
        self.counters.lookups += 1
        started = self._now()
        try:
            held = await asyncio.wait_for(
                self.client.longest_prefix(namespace, hashes), self.config.lookup_timeout_s
            )
        except asyncio.TimeoutError:
            self.counters.load_timeouts += 1
            return
        self._withdraw([digest for digest in hashes[held:] if digest in self._announced])
        local = self._cached_prefix_blocks(hashes)
        if held <= local:
            return  # the engine's own cache holds at least as much: nothing to load
        try:
            sizes = await asyncio.wait_for(
                self.client.get_into(namespace, hashes[local:held], [self._block] * (held - local)),
                self.config.load_timeout_s,
            )
        except asyncio.TimeoutError:
            self.counters.load_timeouts += 1
            return
        loaded = next((i for i, size in enumerate(sizes) if size == MISSING), len(sizes))
        request.tier_from_tokens = local * self.block_size
        request.tier_tokens = (local + loaded) * self.block_size if loaded else 0
        self.counters.loaded_blocks += loaded
        self.counters.load_seconds += self._now() - started

    # --- save ---------------------------------------------------------------------------------------------

    def finished(self, request: SimRequest) -> None:
        if len(self._saves) >= self.config.max_pending_saves:
            self.counters.skipped_saves += 1
            return
        task = asyncio.get_running_loop().create_task(self._save(request))
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    async def _save(self, request: SimRequest) -> None:
        tokens = list(request.all_token_ids)
        hashes = self.hashes(request, tokens)
        namespace = self.namespace(request)
        first = await self.client.longest_prefix(namespace, hashes)
        if first >= len(hashes):
            return
        try:
            values = [self._block] * (len(hashes) - first)
            reply = await self.client.put(namespace, hashes[first:], values)
        except TierError as error:
            log.warning("tier refused a save", extra={"error": str(error)})
            return
        if reply.stored + reply.present == 0:
            return  # node down: nothing to announce
        self.counters.saved_blocks += reply.stored
        self._announce(request, tokens, hashes, first)

    # --- events -------------------------------------------------------------------------------------------

    def _announce(self, request: SimRequest, tokens: list[int], hashes: list[bytes], first: int) -> None:
        if self._events is None:
            return
        fresh = [i for i in range(first, len(hashes)) if hashes[i] not in self._announced]
        if not fresh:
            return
        start = fresh[0]
        for digest in hashes[start:]:
            self._announced[digest] = None
            self._announced.move_to_end(digest)
        bs = self.block_size
        external = self.hasher.external
        self._events.publish([
            BlockStored(
                block_hashes=[external(digest) for digest in hashes[start:]],
                parent_block_hash=external(hashes[start - 1]) if start else None,
                token_ids=tokens[start * bs : len(hashes) * bs],
                block_size=bs,
                lora_id=request.lora_int_id if request.lora_name is not None else None,
                medium=MEDIUM_CPU,
                lora_name=request.lora_name,
            )
        ])
        overflow = len(self._announced) - MAX_ANNOUNCED_BLOCKS
        if overflow > 0:
            self._withdraw([digest for digest, _ in zip(self._announced, range(overflow))])

    def _withdraw(self, digests: list[bytes]) -> None:
        if not digests or self._events is None:
            return
        for digest in digests:
            self._announced.pop(digest, None)
        external = self.hasher.external
        removed = BlockRemoved(block_hashes=[external(digest) for digest in digests], medium=MEDIUM_CPU)
        self._events.publish([removed])

    async def close(self) -> None:
        for task in (*self._saves, *self._loads):
            task.cancel()
        await asyncio.gather(*self._saves, *self._loads, return_exceptions=True)
        await self.client.close()

