"""vLLM KV connector over brixmesh's KV tier, loaded by unmodified vLLM 0.32 (CPU build)::

    --kv-transfer-config '{"kv_connector": "BrixTierConnector",
                           "kv_connector_module_path": "brixmesh.common.kv_tier_vllm",
                           "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
                           "kv_connector_extra_config": {"tier_nodes": ["127.0.0.1:7400"]}}'

(``brixmesh.common.vllm_cpu.tier_kv_transfer_config`` writes it.) It imports only inside vLLM's venv, where
``vllm_site/sitecustomize.py`` makes ``brixmesh.common`` importable; the pure planning is in
``brixmesh.common.kv_tier_plan``.

Scheduler side: for a new request, asks the tier (``longest_prefix``, bounded by ``lookup_timeout_ms``) how
many of the blocks past the local prefix-cache hit it holds, and reports them as an *asynchronous* external
hit, so the request waits in ``WAITING_FOR_REMOTE_KVS`` while other requests keep stepping. Each step it
tells the worker which blocks to load and which blocks became full (to save).

Worker side: starts each load as a background get (at most ``max_pending_loads``); after every step it
copies finished gets into the paged KV cache on the model runner's own thread (never while a forward
runs) and reports the request done. A load still running at ``load_timeout_ms``, a missing block or a dead
tier ends the load early: the blocks from the first missing one on are reported invalid and vLLM
recomputes them (``kv_load_failure_policy: recompute``, required). New full blocks are copied out of the
cache after the step and put asynchronously (at most ``max_pending_saves`` puts queued; beyond that they
are dropped: the tier is a cache). So a slow or dead tier never holds a step longer than one lookup.

Layout: the CPU cache is one tensor per layer, ``[num_blocks, kv_heads, block_size, head_size*2]`` with an
ISA-specific packing inside a block, so a tier value is the block's bytes of every layer, concatenated in
layer-name order, and the namespace's dtype names the packing (``bfloat16/x86_64-amx``).
"""

from __future__ import annotations

import platform
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_events import BlockRemoved, BlockStored, KVCacheEvent
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)
from vllm.logger import init_logger
from vllm.v1.core.kv_cache_utils import maybe_convert_block_hash
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from brixmesh.common.kv_tier import BlockingKvTierClient, PutReply, TierError, TierNamespace
from brixmesh.common.kv_tier_plan import (
    AnnouncedBlocks,
    completed_blocks,
    leading_valid,
    loadable_blocks,
    parse_settings,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

logger = init_logger(__name__)

LOAD_POLL_S = 0.002
"""Longest a step that ran the model waits for a get about to finish (saves a whole step of latency)."""
IDLE_LOAD_POLL_S = 0.02
"""Longest an empty step (nothing to compute, loads pending) waits: rather than spinning empty steps that
take the CPU from the get itself; a request arriving meanwhile waits at most this long."""


@dataclass(slots=True)
class BlockTransfer:
    """Blocks of one request to move between the tier and the paged cache (same order in both lists); a
    save also carries what its KV event needs."""

    req_id: str
    adapter: str
    cache_salt: str
    hashes: list[bytes]
    block_ids: list[int]
    parent_hash: bytes | None = None
    token_ids: list[int] = field(default_factory=list)
    lora_id: int | None = None


@dataclass
class TierConnectorMetadata(KVConnectorMetadata):
    loads: list[BlockTransfer] = field(default_factory=list)
    saves: list[BlockTransfer] = field(default_factory=list)


@dataclass
class TierWorkerMetadata(KVConnectorWorkerMetadata):
    """Worker -> scheduler: saves the tier stored in full since the last step (to announce)."""

    saved: list[BlockTransfer] = field(default_factory=list)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        assert isinstance(other, TierWorkerMetadata)
        return TierWorkerMetadata(self.saved + other.saved)


@dataclass(slots=True)
class _PendingLoad:
    transfer: BlockTransfer
    future: Future
    deadline: float


def _kv_layout_tag() -> str:
    """The CPU attention kernel packs a block per instruction set: blocks only move between equal ones."""
    if torch.cpu._is_amx_tile_supported():
        isa = "amx"
    elif torch.cpu._is_avx512_supported():
        isa = "avx512"
    else:
        isa = "base"
    return f"{platform.machine()}-{isa}"


class BrixTierConnector(KVConnectorBase_V1):
    _cache_hit_source = CacheHitSource.HOST

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a dropped save is a later miss

    def __init__(
        self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._settings = parse_settings(self._kv_transfer_config.kv_connector_extra_config)
        if self._kv_transfer_config.kv_load_failure_policy != "recompute":
            raise ValueError(
                'BrixTierConnector needs "kv_load_failure_policy": "recompute" in --kv-transfer-config '
                "(a block the tier lost must be recomputed, not fail the request)"
            )
        self._block_size = vllm_config.cache_config.block_size
        model = vllm_config.model_config
        cache_dtype = vllm_config.cache_config.cache_dtype
        dtype = str(model.dtype).removeprefix("torch.") if cache_dtype == "auto" else cache_dtype
        self._model = model.model
        self._dtype = f"{dtype}/{_kv_layout_tag()}"
        self._tp_rank = 0
        scheduler = role == KVConnectorRole.SCHEDULER
        timeout_s = self._settings.lookup_timeout_s if scheduler else self._settings.load_timeout_s
        self._tier = BlockingKvTierClient(
            list(self._settings.tier_nodes), timeout_s=timeout_s, retry_after_s=self._settings.retry_after_s
        )
        # Scheduler side.
        self._requests: dict[str, Request] = {}
        self._local_tokens: dict[str, int] = {}
        self._loading: set[str] = set()
        self._planned_loads: list[BlockTransfer] = []
        self._announced = AnnouncedBlocks()
        self._events: list[KVCacheEvent] = []
        # Worker side.
        self._layers: list[torch.Tensor] = []
        self._block_bytes = 0
        self._fetcher: ThreadPoolExecutor | None = None
        self._pending_loads: dict[str, _PendingLoad] = {}
        self._idle_step = False
        self._load_errors: set[int] = set()
        self._pending_saves: set[Future] = set()
        self._saved: deque[BlockTransfer] = deque()  # appended by the client's thread
        if role == KVConnectorRole.WORKER:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

            self._tp_rank = get_tensor_model_parallel_rank()
            self._fetcher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kv-tier-load")

    def _namespace(self, transfer: BlockTransfer) -> TierNamespace:
        return TierNamespace(
            self._model, self._dtype, self._block_size, self._tp_rank, transfer.adapter, transfer.cache_salt
        )

    # ---------------------------------------------------------------- scheduler side

    def _transfer(self, request: Request, blocks: range, block_ids: list[int] | None = None) -> BlockTransfer:
        lora = request.lora_request
        return BlockTransfer(
            req_id=request.request_id,
            adapter=lora.lora_name if lora is not None else "",
            cache_salt=request.cache_salt or "",
            hashes=[bytes(request.block_hashes[index]) for index in blocks],
            block_ids=[] if block_ids is None else [block_ids[index] for index in blocks],
        )

    def _save(self, request: Request, blocks: range, block_ids: list[int]) -> BlockTransfer:
        transfer = self._transfer(request, blocks, block_ids)
        transfer.parent_hash = bytes(request.block_hashes[blocks.start - 1]) if blocks.start else None
        tokens = request.all_token_ids
        transfer.token_ids = list(tokens[blocks.start * self._block_size : blocks.stop * self._block_size])
        transfer.lora_id = request.lora_request.lora_int_id if request.lora_request is not None else None
        return transfer

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        self._requests[request.request_id] = request
        self._local_tokens[request.request_id] = num_computed_tokens
        loadable = loadable_blocks(request.num_tokens, num_computed_tokens, self._block_size)
        candidates = range(loadable.start, min(loadable.stop, len(request.block_hashes)))
        if not candidates:
            return 0, False
        probe = self._transfer(request, candidates)
        try:
            held = self._tier.longest_prefix(self._namespace(probe), probe.hashes)
        except TierError as error:  # the node refused the request: a miss, never the engine's failure
            logger.warning("KV tier lookup refused: %s", error)
            held = 0
        self._withdraw(self._announced.lost(probe.hashes[held:]))
        tokens = held * self._block_size
        return tokens, tokens > 0

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        if num_external_tokens == 0:
            return
        first = self._local_tokens[request.request_id] // self._block_size
        wanted = range(first, first + num_external_tokens // self._block_size)
        self._planned_loads.append(self._transfer(request, wanted, blocks.get_block_ids()[0]))
        self._loading.add(request.request_id)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = TierConnectorMetadata(loads=self._planned_loads)
        self._planned_loads = []
        scheduled = scheduler_output.num_scheduled_tokens
        steps = [(new.req_id, new.num_computed_tokens) for new in scheduler_output.scheduled_new_reqs]
        cached = scheduler_output.scheduled_cached_reqs
        steps += zip(cached.req_ids, cached.num_computed_tokens)
        for req_id, num_computed in steps:
            request = self._requests.get(req_id)
            if request is None or self._kv_cache_manager is None:
                continue
            hashed = len(request.block_hashes)
            full = completed_blocks(num_computed, scheduled[req_id], self._block_size, hashed)
            if full:
                block_ids = self._kv_cache_manager.get_block_ids(req_id)[0]
                meta.saves.append(self._save(request, full, block_ids))
        return meta

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        self._loading.difference_update(connector_output.finished_recving or ())
        worker_meta = connector_output.kv_connector_worker_meta
        if isinstance(worker_meta, TierWorkerMetadata):
            for transfer in worker_meta.saved:
                self._announce(transfer)

    def _announce(self, transfer: BlockTransfer) -> None:
        """Routers count the saved blocks for this engine (below its own GPU blocks)."""
        first_new, withdrawn = self._announced.announce(transfer.hashes)
        if first_new < len(transfer.hashes):
            hashes = transfer.hashes
            parent = hashes[first_new - 1] if first_new else transfer.parent_hash
            self._events.append(
                BlockStored(
                    block_hashes=[maybe_convert_block_hash(digest) for digest in hashes[first_new:]],
                    parent_block_hash=maybe_convert_block_hash(parent) if parent is not None else None,
                    token_ids=transfer.token_ids[first_new * self._block_size :],
                    block_size=self._block_size,
                    lora_id=transfer.lora_id,
                    medium="CPU",
                    lora_name=transfer.adapter or None,
                )
            )
        self._withdraw(withdrawn)

    def _withdraw(self, hashes: list[bytes]) -> None:
        if hashes:
            converted = [maybe_convert_block_hash(digest) for digest in hashes]
            self._events.append(BlockRemoved(block_hashes=converted, medium="CPU"))

    def take_events(self) -> list[KVCacheEvent]:
        events, self._events = self._events, []
        return events

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._requests.pop(request.request_id, None)
        self._local_tokens.pop(request.request_id, None)
        # A load still in flight writes into these blocks: vLLM frees them once the worker reports it done.
        return request.request_id in self._loading, None

    # ---------------------------------------------------------------- worker side

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        num_blocks = self._kv_cache_config.num_blocks
        seen: set[int] = set()
        for name in sorted(kv_caches):
            cache = kv_caches[name]
            if cache.data_ptr() in seen:
                continue  # layers sharing one buffer
            seen.add(cache.data_ptr())
            if cache.shape[0] != num_blocks or not cache.is_contiguous():
                raise ValueError(
                    f"BrixTierConnector needs the CPU KV layout [num_blocks, ...] per layer; layer {name} "
                    f"has shape {tuple(cache.shape)} for {num_blocks} blocks"
                )
            self._layers.append(cache.view(torch.uint8).view(num_blocks, -1))
        self._block_bytes = sum(layer.shape[1] for layer in self._layers)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierConnectorMetadata)
        assert self._fetcher is not None
        self._idle_step = forward_context.attn_metadata is None
        for transfer in meta.loads:
            if len(self._pending_loads) >= self._settings.max_pending_loads:
                future: Future = Future()
                future.set_result([])  # over the bound: recompute rather than queue
            else:
                future = self._fetcher.submit(self._tier.get, self._namespace(transfer), transfer.hashes)
            deadline = time.monotonic() + self._settings.load_timeout_s
            self._pending_loads[transfer.req_id] = _PendingLoad(transfer, future, deadline)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads land between steps, before the request is scheduled to compute

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: AttentionMetadata, **kwargs: Any
    ) -> None:
        return  # whole blocks are copied out once per step, in wait_for_save

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierConnectorMetadata)
        for transfer in meta.saves:
            if len(self._pending_saves) >= self._settings.max_pending_saves:
                logger.warning_once("KV tier puts queue full: new blocks are not saved until it drains")
                continue
            rows = torch.tensor(transfer.block_ids, dtype=torch.long)
            # One copy out of the paged cache (its blocks may be reused after this step); the put sends
            # views of it.
            values = torch.cat([layer.index_select(0, rows) for layer in self._layers], dim=1).numpy()
            rows_out = [memoryview(row) for row in values]
            future = self._tier.submit_put(self._namespace(transfer), transfer.hashes, rows_out)
            self._pending_saves.add(future)
            future.add_done_callback(lambda done, transfer=transfer: self._save_done(done, transfer))

    def _save_done(self, future: Future, transfer: BlockTransfer) -> None:
        self._pending_saves.discard(future)
        if future.cancelled():
            return
        if future.exception() is not None:
            logger.warning("KV tier put failed: %s", future.exception())
            return
        reply: PutReply = future.result()
        if reply.stored + reply.present == len(transfer.hashes):
            self._saved.append(transfer)

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        saved = []
        while self._saved:
            saved.append(self._saved.popleft())
        return TierWorkerMetadata(saved) if saved else None

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        if not self._pending_loads:
            return None, None
        now = time.monotonic()
        running = [load.future for load in self._pending_loads.values() if not load.future.done()]
        if running:
            soonest = min(load.deadline for load in self._pending_loads.values())
            poll_s = IDLE_LOAD_POLL_S if self._idle_step else LOAD_POLL_S
            wait_futures(running, timeout=max(0.0, min(poll_s, soonest - now)), return_when="FIRST_COMPLETED")
            now = time.monotonic()
        finished: set[str] = set()
        for req_id, load in list(self._pending_loads.items()):
            if load.future.done():
                values = [] if load.future.cancelled() or load.future.exception() else load.future.result()
            elif now >= load.deadline:
                load.future.cancel()
                values = []
            else:
                continue
            loaded = self._write_blocks(load.transfer.block_ids, values)
            self._load_errors.update(load.transfer.block_ids[loaded:])
            del self._pending_loads[req_id]
            finished.add(req_id)
        return None, finished or None

    def _write_blocks(self, block_ids: list[int], values: list[memoryview | None]) -> int:
        """Copies the leading whole blocks into the paged cache; returns how many."""
        loaded = leading_valid(values[: len(block_ids)], self._block_bytes)
        for block_id, value in zip(block_ids[:loaded], values):
            source = torch.frombuffer(value, dtype=torch.uint8)
            offset = 0
            for layer in self._layers:
                width = layer.shape[1]
                layer[block_id].copy_(source[offset : offset + width])
                offset += width
        return loaded

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self) -> None:
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=False, cancel_futures=True)
        self._tier.close()
