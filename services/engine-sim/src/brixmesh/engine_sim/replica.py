"""One simulated engine: tokenizer, KV cache, scheduler, timing, metrics, LoRA, faults and event publisher."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from pathlib import Path

from brixmesh.engine_sim.config import EngineConfig
from brixmesh.engine_sim.engine import Engine, EventSink
from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_events import ZmqKvEventPublisher
from brixmesh.engine_sim.kv_tier import SimKvTier, parse_tier_config
from brixmesh.engine_sim.kv_transfer import KvTransfer, transfer_counters
from brixmesh.engine_sim.lora import LoraRegistry
from brixmesh.engine_sim.metrics import EngineInfo, EngineMetrics, LiveState, SglangMetrics, VllmMetrics
from brixmesh.engine_sim.parallel import group_step_model
from brixmesh.engine_sim.scheduler import Scheduler, SchedulerLimits
from brixmesh.engine_sim.timing import (
    LoraOverhead,
    RooflineModel,
    build_step_model,
    gpu_profile,
    model_profile_named,
)
from brixmesh.engine_sim.tokenizer import SimTokenizer

log = logging.getLogger(__name__)

VLLM_VERSION = "0.32.0"


def default_batch_limits(config: EngineConfig) -> tuple[int, int]:
    """vLLM's defaults for the GPU profile: (max_num_batched_tokens, max_num_seqs)."""
    if config.perf_model == "roofline":
        profile = gpu_profile(config.gpu)
        return profile.max_num_batched_tokens, profile.max_num_seqs
    return 2048, 256


def num_gpu_blocks(config: EngineConfig, step_model: object) -> int:
    if config.num_gpu_blocks_override is not None:
        return config.num_gpu_blocks_override
    if isinstance(step_model, RooflineModel):
        return max(2, step_model.kv_cache_tokens(config.gpu_memory_utilization) // config.block_size)
    return max(2, 65536 // config.block_size)


class Replica:
    def __init__(self, config: EngineConfig, tokenizer: SimTokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.created = int(time.time())
        self.fingerprint = f"vllm-{VLLM_VERSION}-{secrets.token_hex(4)}"
        self.engine_id = secrets.token_hex(8)
        self.rng = random.Random(config.seed + config.replica_index)
        self.faults = config.faults
        self.started_at = time.monotonic()
        step_model = build_step_model(
            config.perf_model,
            config.gpu,
            config.model_profile,
            config.time_to_first_token_ms,
            config.inter_token_latency_ms,
            config.prefill_overhead_ms,
            config.prefill_time_per_token_ms,
        )
        step_model = group_step_model(step_model, config.group)
        batched, seqs = default_batch_limits(config)
        self.max_num_batched_tokens = config.max_num_batched_tokens or batched
        self.max_num_seqs = config.max_num_seqs or seqs
        self.num_gpu_blocks = num_gpu_blocks(config, step_model)
        if config.enable_lora and config.lora_step_overhead > 0:
            step_model = LoraOverhead(step_model, config.lora_step_overhead)
        capacity = (self.num_gpu_blocks - 1) * config.block_size  # block 0 is the null block
        if config.max_model_len > capacity:
            raise ValueError(
                f"max_model_len {config.max_model_len} does not fit the KV cache ({self.num_gpu_blocks} blocks "
                f"of {config.block_size} tokens hold {capacity}); raise --num-gpu-blocks-override or lower "
                "--max-model-len"
            )
        kv_events = config.kv_events_config
        events: EventSink | None = None
        if kv_events is not None and kv_events.publishes:
            events = ZmqKvEventPublisher(
                kv_events,
                0,
                encoding=config.kv_events_encoding,
                fault_seed=config.seed + config.replica_index,
            )
        self.events = events
        self.hasher = BlockHasher(config.prefix_caching_hash_algo)  # type: ignore[arg-type]
        self.kv = KvCacheManager(
            self.num_gpu_blocks,
            config.block_size,
            self.hasher,
            config.enable_prefix_caching,
            enable_events=events is not None,
        )
        self.scheduler = Scheduler(
            SchedulerLimits(
                self.max_num_seqs,
                self.max_num_batched_tokens,
                config.max_model_len,
                config.max_loras if config.enable_lora else 0,
                config.long_prefill_token_threshold,
            ),
            self.kv,
        )
        self.lora = LoraRegistry(config.served_model_names)
        for name, path in config.lora_modules:
            self.lora.load(name, path)
        live = LiveState(
            num_running=lambda: len(self.scheduler.running),
            num_waiting=lambda: len(self.scheduler.waiting),
            num_deferred=lambda: self.scheduler.num_deferred,
            kv_usage=lambda: self.kv.usage,
            running_adapters=lambda: sorted({r.lora_name for r in self.scheduler.running if r.lora_name}),
            waiting_adapters=lambda: sorted({r.lora_name for r in self.scheduler.waiting if r.lora_name}),
        )
        info = EngineInfo(
            model_name=config.served_model_name,
            engine_index=0,
            max_model_len=config.max_model_len,
            block_size=config.block_size,
            num_gpu_blocks=self.num_gpu_blocks,
            num_gpu_blocks_override=config.num_gpu_blocks_override,
            enable_prefix_caching=config.enable_prefix_caching,
            hash_algo=config.prefix_caching_hash_algo,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_loras=config.max_loras,
            lora_enabled=config.enable_lora,
            kv_bytes_per_token=model_profile_named(config.model_profile).kv_bytes_per_token,
        )
        self.metrics: EngineMetrics
        if config.metrics_flavor == "sglang":
            self.metrics = SglangMetrics(info, live)
        else:
            self.metrics = VllmMetrics(info, live, legacy=config.legacy_metrics)
        self.engine = Engine(
            self.scheduler, self.kv, step_model, self.metrics, self.faults, events, config.time_scale
        )
        self.kv_tier: SimKvTier | None = None
        tier_config = parse_tier_config(config.kv_transfer_config)
        if tier_config is not None:
            block_bytes = model_profile_named(config.model_profile).kv_bytes_per_token * config.block_size
            self.kv_tier = SimKvTier(
                tier_config, config.served_model_name, config.block_size, block_bytes, self.hasher,
                self.kv.cached_prefix_blocks, self.engine.now, events,
            )  # fmt: skip
            self.engine.connector = self.kv_tier
        self.transfer = self._kv_transfer() if config.kv_transfer is not None else None
        self.engine.kv_transfer = self.transfer
        self.apply_publisher_faults()
        self._fault_tasks: list[asyncio.Task[None]] = []
        self.on_crash: asyncio.Event = asyncio.Event()

    def _kv_transfer(self) -> KvTransfer:
        config = self.config
        assert config.kv_transfer is not None
        kv_bytes = model_profile_named(config.model_profile).kv_bytes_per_token
        if config.kv_transfer_per_token_us is not None:
            link = kv_bytes / (config.kv_transfer_per_token_us / 1e6)
        else:
            link = gpu_profile(config.gpu).kv_link_gbytes_s * 1e9
        failed, expired = transfer_counters(
            self.metrics.registry, config.kv_transfer, config.served_model_name
        )
        return KvTransfer(
            config.kv_transfer,
            host=config.host,
            block_size=config.block_size,
            kv_bytes_per_token=kv_bytes,
            link_bytes_per_s=link,
            overhead_s=config.kv_transfer_overhead_ms / 1000,
            time_scale=config.time_scale,
            release=self.engine.release,
            on_failed=failed.inc,
            on_expired=expired.inc,
        )

    async def start_transfer(self) -> None:
        """Opens the KV transfer port (P/D producers) before the HTTP port: decodes may pull at once."""
        if self.transfer is not None:
            await self.transfer.start()

    @property
    def model_dir(self) -> str:
        path = Path(self.config.model)
        return str(path.resolve()) if path.exists() else self.config.model

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.engine.start()
        loop = asyncio.get_running_loop()
        self._fault_tasks.append(loop.create_task(self._timed_faults()))

    async def stop(self) -> None:
        for task in self._fault_tasks:
            task.cancel()
        await self.engine.stop()
        if self.kv_tier is not None:
            await self.kv_tier.close()
        if self.transfer is not None:
            await self.transfer.stop()
        if isinstance(self.events, ZmqKvEventPublisher):
            self.events.close()

    def apply_publisher_faults(self) -> None:
        publisher = self.events
        if isinstance(publisher, ZmqKvEventPublisher):
            publisher.drop_probability = self.faults.kv_events_drop_prob
            publisher.reorder = self.faults.kv_events_reorder

    async def _timed_faults(self) -> None:
        """Crash/hang after N seconds; re-read every tick so ``/admin/faults`` can arm them at runtime."""
        while True:
            await asyncio.sleep(0.05)
            elapsed = time.monotonic() - self.started_at
            if self.faults.hang_after_s is not None and elapsed >= self.faults.hang_after_s:
                self.faults.hang = True
            if self.faults.crash_after_s is not None and elapsed >= self.faults.crash_after_s:
                log.warning("engine %d: injected crash", self.config.replica_index)
                self.on_crash.set()
                return
