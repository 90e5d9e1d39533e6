"""Which Prometheus series of each engine flavour carry the quantities the autoscaler normalizes.

Every field lists candidate names in order of preference: the first one a scrape contains wins, which is
how vLLM 0.32's ``kv_cache_usage_perc`` falls back to the pre-v1 ``gpu_cache_usage_perc``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Flavor:
    name: str
    prefix: str
    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_usage: tuple[str, ...]
    prefix_queries: tuple[str, ...]
    """Counter of prompt tokens looked up in the prefix cache (hit rate = Δhits / Δqueries)."""
    prefix_hits: tuple[str, ...]
    prompt_tokens: tuple[str, ...]
    generation_tokens: tuple[str, ...]
    preemptions: tuple[str, ...]
    ttft: tuple[str, ...]
    """Histogram base names (without ``_bucket``)."""
    itl: tuple[str, ...]

    @property
    def gauges(self) -> frozenset[str]:
        return frozenset(self.running + self.waiting + self.kv_usage)

    @property
    def counters(self) -> frozenset[str]:
        return frozenset(
            self.prefix_queries
            + self.prefix_hits
            + self.prompt_tokens
            + self.generation_tokens
            + self.preemptions
        )

    @property
    def histograms(self) -> frozenset[str]:
        return frozenset(self.ttft + self.itl)


VLLM = Flavor(
    name="vllm",
    prefix="vllm:",
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    prefix_queries=("vllm:prefix_cache_queries_total",),
    prefix_hits=("vllm:prefix_cache_hits_total",),
    prompt_tokens=("vllm:prompt_tokens_total",),
    generation_tokens=("vllm:generation_tokens_total",),
    preemptions=("vllm:num_preemptions_total",),
    ttft=("vllm:time_to_first_token_seconds",),
    itl=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
)

SGLANG = Flavor(
    name="sglang",
    prefix="sglang:",
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_usage=("sglang:token_usage",),
    prefix_queries=("sglang:prompt_tokens_total",),
    prefix_hits=("sglang:cached_tokens_total",),
    prompt_tokens=("sglang:prompt_tokens_total",),
    generation_tokens=("sglang:generation_tokens_total",),
    preemptions=(),
    ttft=("sglang:time_to_first_token_seconds",),
    itl=("sglang:inter_token_latency_seconds",),
)

FLAVORS: dict[str, Flavor] = {VLLM.name: VLLM, SGLANG.name: SGLANG}


def detect_flavor(text: str) -> Flavor:
    """SGLang when its running-requests gauge is present, vLLM otherwise (one substring search)."""
    return SGLANG if "sglang:num_running_reqs" in text else VLLM
