"""Prometheus metrics with vLLM 0.32's names, labels, help texts and buckets (or SGLang's), one registry per engine.

Latencies are in simulated seconds (wall-clock divided by ``--time-scale``), so they match the modelled GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from brixmesh.engine_sim.request import SimRequest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
N_BUCKETS = (1, 2, 5, 10, 20)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


def buckets_1_2_5(limit: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``limit`` (vLLM sizes token histograms by max_model_len)."""
    out: list[float] = []
    magnitude = 1
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * magnitude
            if value > limit:
                return tuple(out)
            out.append(float(value))
        magnitude *= 10


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model_name: str
    engine_index: int
    max_model_len: int
    block_size: int
    num_gpu_blocks: int
    num_gpu_blocks_override: int | None
    enable_prefix_caching: bool
    hash_algo: str
    gpu_memory_utilization: float
    max_loras: int
    lora_enabled: bool
    kv_bytes_per_token: int


@dataclass(slots=True)
class LiveState:
    """Callables the gauges read at scrape time."""

    num_running: Callable[[], int]
    num_waiting: Callable[[], int]
    num_deferred: Callable[[], int]
    kv_usage: Callable[[], float]
    running_adapters: Callable[[], list[str]]
    waiting_adapters: Callable[[], list[str]]


class EngineMetrics(Protocol):
    """Hooks the engine loop calls; each flavor maps them to its own metric names."""

    def on_step(self, num_tokens: int, num_preemptions: int, num_generation_tokens: int) -> None: ...

    def on_first_token(self, request: SimRequest) -> None: ...

    def on_finished(self, request: SimRequest) -> None: ...

    def on_prefix_cache(self, queries: int, hits: int) -> None: ...

    def render(self) -> bytes: ...


class VllmMetrics:
    def __init__(self, info: EngineInfo, live: LiveState, legacy: bool = False) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.live = live
        self.info = info
        names = ["model_name", "engine"]
        label = {"model_name": info.model_name, "engine": str(info.engine_index)}

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*names, *extra], registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=registry)

        for name, doc in (
            (
                "vllm:estimated_flops_per_gpu",
                "Estimated number of floating point operations per GPU (for Model Flops Utilization calculations).",
            ),
            (
                "vllm:estimated_read_bytes_per_gpu",
                "Estimated number of bytes read from memory per GPU (for Model Flops Utilization calculations).",
            ),
            (
                "vllm:estimated_write_bytes_per_gpu",
                "Estimated number of bytes written to memory per GPU (for Model Flops Utilization calculations).",
            ),
        ):
            counter(name, doc).labels(**label)
        Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            names,
            registry=registry,
        ).labels(**label).set_function(live.num_running)
        Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            names,
            registry=registry,
        ).labels(**label).set_function(live.num_waiting)
        by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
            "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). "
            "Sum of all reasons equals vllm:num_requests_waiting.",
            [*names, "reason"],
            registry=registry,
        )
        by_reason.labels(**label, reason="capacity").set_function(
            lambda: live.num_waiting() - live.num_deferred()
        )
        by_reason.labels(**label, reason="deferred").set_function(live.num_deferred)
        sleep = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            [*names, "sleep_state"],
            registry=registry,
        )
        self.sleep_state = {
            s: sleep.labels(**label, sleep_state=s) for s in ("awake", "weights_offloaded", "discard_all")
        }
        self.set_sleep_level(0)
        Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", names, registry=registry
        ).labels(**label).set_function(live.kv_usage)
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        ).labels(**label)
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        ).labels(**label)
        counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.",
        ).labels(**label)
        counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.",
        ).labels(**label)
        counter(
            "vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items."
        ).labels(**label)
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.").labels(
            **label
        )
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        ).labels(**label)
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.").labels(
            **label
        )
        by_source = counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", ("source",))
        self.prompt_by_source = {
            s: by_source.labels(**label, source=s)
            for s in ("local_compute", "local_cache_hit", "external_kv_transfer")
        }
        self.prompt_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        ).labels(**label)
        cached_by_source = counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), "
            "disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; sums to "
            "vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
            ("source",),
        )
        self.cached_by_source = {
            s: cached_by_source.labels(**label, source=s)
            for s in ("device", "host", "p2p", "disk", "external_unspecified")
        }
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        ).labels(**label)
        success = counter(
            "vllm:request_success", "Count of successfully processed requests.", ("finished_reason",)
        )
        self.success = {r: success.labels(**label, finished_reason=r) for r in FINISH_REASONS}
        rejections = Counter(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            ["model_name", "reason"],
            registry=registry,
        )
        self.rejections = {
            r: rejections.labels(model_name=info.model_name, reason=r)
            for r in ("max_num_queued_reqs", "max_num_queued_tokens")
        }
        token_buckets = buckets_1_2_5(info.max_model_len)
        self.h_prompt = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        ).labels(**label)
        self.h_generation = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        ).labels(**label)
        self.h_iteration = histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
        ).labels(**label)
        self.h_max_gen = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        ).labels(**label)
        self.h_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS
        ).labels(**label)
        self.h_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", token_buckets
        ).labels(**label)
        self.h_ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        ).labels(**label)
        self.h_itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        ).labels(**label)
        self.h_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        ).labels(**label)
        self.h_e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(**label)
        self.h_queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(**label)
        self.h_inference = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(**label)
        self.h_prefill = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(**label)
        self.h_decode = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(**label)
        self.h_preemptions = histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            PREEMPTION_BUCKETS,
        ).labels(**label)
        self.h_prefill_kv = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            token_buckets,
        ).labels(**label)
        if info.lora_enabled:
            self._lora_info = Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                registry=registry,
            )
        self._cache_config_info(info)
        self.legacy = legacy
        if legacy:
            self._register_legacy(names, label)

    def _cache_config_info(self, info: EngineInfo) -> None:
        # Every label vLLM 0.32 exports (no model_name on this one), values from our configuration.
        tokens = info.block_size * info.num_gpu_blocks
        values = {
            "_block_size_resolved": "True",
            "block_size": str(info.block_size),
            "cache_dtype": "auto",
            "cache_hit_alignment_tokens": "None",
            "effective_attention_block_size": str(info.block_size),
            "enable_mamba_shared_prefix_checkpoint": "False",
            "enable_prefix_caching": str(info.enable_prefix_caching),
            "engine": str(info.engine_index),
            "gpu_memory_utilization": str(info.gpu_memory_utilization),
            "hash_block_size": "None",
            "is_attention_free": "False",
            "kv_cache_dtype_skip_layers": "[]",
            "kv_cache_layout": "None",
            "kv_cache_max_concurrency": str(round(tokens / info.max_model_len, 2)),
            "kv_cache_memory_bytes": str(tokens * info.kv_bytes_per_token),
            "kv_cache_size_tokens": str(tokens),
            "kv_offloading_backend": "native",
            "kv_offloading_size": "None",
            "kv_sharing_fast_prefill": "False",
            "mamba_block_size": "None",
            "mamba_cache_dtype": "auto",
            "mamba_cache_mode": "none",
            "mamba_page_size_padded": "None",
            "mamba_ssm_cache_dtype": "float32",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(info.num_gpu_blocks),
            "num_gpu_blocks_override": str(info.num_gpu_blocks_override),
            "prefix_cache_retention_interval": "0",
            "prefix_caching_hash_algo": info.hash_algo,
            "prefix_match_unit": "None",
            "replayssm_buffer_len": "16",
            "skip_page_size_padded": "None",
            "sliding_window": "None",
            "swa_bounded_replay": "True",
            "use_kda_recoverssm": "False",
            "use_replayssm": "False",
            "user_specified_block_size": "True",
        }
        gauge = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            list(values),
            registry=self.registry,
        )
        gauge.labels(**values).set(1)

    def _register_legacy(self, names: list[str], label: dict[str, str]) -> None:
        registry = self.registry
        Gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            names,
            registry=registry,
        ).labels(**label).set_function(self.live.kv_usage)
        Gauge(
            "vllm:cpu_cache_usage_perc",
            "CPU KV-cache usage. 1 means 100 percent usage.",
            names,
            registry=registry,
        ).labels(**label).set(0)
        Gauge(
            "vllm:num_requests_swapped", "Number of requests swapped to CPU.", names, registry=registry
        ).labels(**label).set(0)
        self._throughput = _ThroughputWindow()
        Gauge(
            "vllm:avg_prompt_throughput_toks_per_s",
            "Average prefill throughput in tokens/s.",
            names,
            registry=registry,
        ).labels(**label).set_function(lambda: self._throughput.rates()[0])
        Gauge(
            "vllm:avg_generation_throughput_toks_per_s",
            "Average generation throughput in tokens/s.",
            names,
            registry=registry,
        ).labels(**label).set_function(lambda: self._throughput.rates()[1])
        self.h_tpot_legacy = Histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            names,
            buckets=ITL_BUCKETS,
            registry=registry,
        ).labels(**label)

    def render(self) -> bytes:
        if self.info.lora_enabled:
            self.refresh_lora_info()
        return generate_latest(self.registry)

    def set_sleep_level(self, level: int) -> None:
        for state, child in self.sleep_state.items():
            on = (
                (state == "awake" and level == 0)
                or (state == "weights_offloaded" and level == 1)
                or (state == "discard_all" and level == 2)
            )
            child.set(1 if on else 0)

    def refresh_lora_info(self) -> None:
        """Stamps the current (running, waiting) adapter sets; like vLLM, earlier label sets stay exported."""
        self._lora_info.labels(
            max_lora=str(self.info.max_loras),
            waiting_lora_adapters=",".join(self.live.waiting_adapters()),
            running_lora_adapters=",".join(self.live.running_adapters()),
        ).set(time.time())

    def on_step(self, num_tokens: int, num_preemptions: int, num_generation_tokens: int) -> None:
        if self.info.lora_enabled:
            self.refresh_lora_info()
        if num_tokens:
            self.h_iteration.observe(num_tokens)
        if num_preemptions:
            self.preemptions.inc(num_preemptions)
        if num_generation_tokens:
            self.generation_tokens.inc(num_generation_tokens)

    def on_prefix_cache(self, queries: int, hits: int) -> None:
        self.prefix_queries.inc(queries)
        if hits:
            self.prefix_hits.inc(hits)

    def on_first_token(self, request: SimRequest) -> None:
        n = request.num_prompt_tokens
        cached = max(request.num_cached_tokens, 0)
        external = request.num_external_tokens
        self.prompt_tokens.inc(n)
        self.prompt_by_source["local_compute"].inc(n - cached - external)
        if cached:
            self.prompt_by_source["local_cache_hit"].inc(cached)
            self.prompt_cached.inc(cached)
            self.cached_by_source["device"].inc(cached)
        if external:
            self.prompt_by_source["external_kv_transfer"].inc(external)
        if self.legacy:
            self._throughput.add(n, 0)
        assert request.first_token_time is not None
        self.h_ttft.observe(request.first_token_time - request.arrival_time)

    def on_finished(self, request: SimRequest) -> None:
        reason = request.finish_reason or "abort"
        self.success[reason if reason in self.success else "abort"].inc()
        if request.first_token_time is None or request.finished_time is None:
            return
        n_out = request.num_output_tokens
        self.h_prompt.observe(request.num_prompt_tokens)
        self.h_generation.observe(n_out)
        self.h_max_gen.observe(request.max_tokens)
        self.h_n.observe(1)
        self.h_max_tokens.observe(request.max_tokens)
        times = request.token_times
        for previous, current in zip(times, times[1:], strict=False):
            self.h_itl.observe(current - previous)
        decode = request.finished_time - request.first_token_time
        if n_out > 1:
            self.h_tpot.observe(decode / (n_out - 1))
            if self.legacy:
                self.h_tpot_legacy.observe(decode / (n_out - 1))
        if self.legacy:
            self._throughput.add(0, n_out)
        scheduled = request.first_scheduled_time or request.arrival_time
        self.h_e2e.observe(request.finished_time - request.arrival_time)
        self.h_queue.observe(scheduled - request.arrival_time)
        self.h_inference.observe(request.finished_time - scheduled)
        self.h_prefill.observe(request.first_token_time - scheduled)
        self.h_decode.observe(decode)
        self.h_preemptions.observe(request.num_preemptions)
        self.h_prefill_kv.observe(request.num_prompt_tokens - max(request.num_cached_tokens, 0))


class _ThroughputWindow:
    """Token rates over the last 10 s, like the old vLLM stat logger's averages."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.events: list[tuple[float, int, int]] = []

    def add(self, prompt: int, generation: int) -> None:
        self.events.append((time.monotonic(), prompt, generation))

    def rates(self) -> tuple[float, float]:
        cutoff = time.monotonic() - self.window
        self.events = [e for e in self.events if e[0] >= cutoff]
        return (sum(e[1] for e in self.events) / self.window, sum(e[2] for e in self.events) / self.window)


SGLANG_TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
SGLANG_ITL_BUCKETS = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.035,
    0.04,
    0.06,
    0.08,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    2.0,
    4.0,
    6.0,
    8.0,
)
SGLANG_E2E_BUCKETS = (
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1,
    2,
    4,
    6,
    8,
    10,
    20,
    40,
    60,
    80,
    100,
    200,
    400,
    600,
    1200,
    1800,
    2400,
)


class SglangMetrics:
    """SGLang's ``--enable-metrics`` names for the same quantities."""

    def __init__(self, info: EngineInfo, live: LiveState) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        names = ["model_name", "engine_type", "tp_rank", "pp_rank"]
        label = {"model_name": info.model_name, "engine_type": "unified", "tp_rank": "0", "pp_rank": "0"}
        total_tokens = info.block_size * info.num_gpu_blocks

        def gauge(name: str, doc: str, fn: Callable[[], float]) -> None:
            Gauge(name, doc, names, registry=registry).labels(**label).set_function(fn)

        def counter(name: str, doc: str, **extra: str) -> Counter:
            return Counter(name, doc, [*names, *extra], registry=registry).labels(**label, **extra)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=registry).labels(**label)

        gauge("sglang:num_running_reqs", "The number of running requests.", live.num_running)
        gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", live.num_waiting)
        gauge("sglang:token_usage", "The token usage.", live.kv_usage)
        gauge("sglang:num_used_tokens", "The number of used tokens.", lambda: live.kv_usage() * total_tokens)
        gauge(
            "sglang:max_total_num_tokens",
            "Maximum total number of tokens in the KV cache pool.",
            lambda: total_tokens,
        )
        self._queries = 0
        self._hits = 0
        gauge(
            "sglang:cache_hit_rate",
            "The prefix cache hit rate.",
            lambda: self._hits / self._queries if self._queries else 0.0,
        )
        self._gen_window = _ThroughputWindow()
        gauge(
            "sglang:gen_throughput",
            "The generation throughput (token/s).",
            lambda: self._gen_window.rates()[1],
        )
        self.prompt_tokens = counter("sglang:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("sglang:generation_tokens", "Number of generation tokens processed.")
        self.cached_tokens = counter(
            "sglang:cached_tokens", "Number of cached prompt tokens.", cache_source="device"
        )
        self.requests = counter("sglang:num_requests", "The number of processed requests.")
        self.h_ttft = histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            SGLANG_TTFT_BUCKETS,
        )
        self.h_itl = histogram(
            "sglang:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            SGLANG_ITL_BUCKETS,
        )
        self.h_e2e = histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            SGLANG_E2E_BUCKETS,
        )
        self.h_queue = histogram(
            "sglang:queue_time_seconds", "Histogram of queueing time in seconds.", SGLANG_E2E_BUCKETS
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def on_step(self, num_tokens: int, num_preemptions: int, num_generation_tokens: int) -> None:
        if num_generation_tokens:
            self.generation_tokens.inc(num_generation_tokens)
            self._gen_window.add(0, num_generation_tokens)

    def on_prefix_cache(self, queries: int, hits: int) -> None:
        self._queries += queries
        self._hits += hits

    def on_first_token(self, request: SimRequest) -> None:
        self.prompt_tokens.inc(request.num_prompt_tokens)
        if request.num_cached_tokens > 0:
            self.cached_tokens.inc(request.num_cached_tokens)
        assert request.first_token_time is not None
        self.h_ttft.observe(request.first_token_time - request.arrival_time)

    def on_finished(self, request: SimRequest) -> None:
        self.requests.inc()
        if request.finished_time is None or request.first_token_time is None:
            return
        times = request.token_times
        for previous, current in zip(times, times[1:], strict=False):
            self.h_itl.observe(current - previous)
        self.h_e2e.observe(request.finished_time - request.arrival_time)
        self.h_queue.observe((request.first_scheduled_time or request.arrival_time) - request.arrival_time)
