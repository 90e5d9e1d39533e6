"""Step-time models: how long one continuous-batching step takes on a simulated GPU.

The roofline model costs a step as fixed overhead plus the slower of compute (FLOPs at peak x MFU) and
memory traffic (weights + KV read at 80% of bandwidth). The per-token model is a linear stand-in for
simple tests: a base decode step plus a prefill overhead and a cost per prefill token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class GpuProfile:
    name: str
    peak_tflops: float
    bandwidth_tbps: float
    memory_gib: float
    mfu: float
    max_num_batched_tokens: int
    max_num_seqs: int
    kv_link_gbytes_s: float
    """Bandwidth a P/D KV transfer leaving this GPU gets: its RDMA NIC (one per GPU in these nodes)."""


@dataclass(frozen=True, slots=True)
class ModelProfile:
    name: str
    parameters: float
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    bytes_per_param: float = 2.0

    @property
    def weight_bytes(self) -> float:
        return self.parameters * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 K and V for every layer."""
        return 4 * self.layers * self.kv_heads * self.head_dim


GPU_PROFILES: dict[str, GpuProfile] = {
    # vLLM picks 8192/1024 on >= 70 GiB GPUs other than A100, 2048/256 elsewhere. KV links: 400G IB-NDR per
    # H100, 200G HDR per A100, 100GbE for the PCIe cards (~3, 6, 12 us per token of an 8B model's 128 KiB).
    "h100": GpuProfile("h100", 989.5, 3.35, 80, 0.55, 8192, 1024, 50.0),
    "a100": GpuProfile("a100", 312.0, 2.04, 80, 0.65, 2048, 256, 25.0),
    "l20": GpuProfile("l20", 119.5, 0.864, 48, 0.55, 2048, 256, 12.5),
    "a10": GpuProfile("a10", 125.0, 0.600, 24, 0.55, 2048, 256, 12.5),
}

MODEL_PROFILES: dict[str, ModelProfile] = {
    "llama-8b": ModelProfile("llama-8b", 8.03e9, 32, 32, 8, 128),
    "qwen-7b": ModelProfile("qwen-7b", 7.62e9, 28, 28, 4, 128),
    "llama2-7b": ModelProfile("llama2-7b", 6.74e9, 32, 32, 32, 128),
    "qwen3-8b": ModelProfile("qwen3-8b", 8.19e9, 36, 32, 8, 128),
    "qwen3-32b": ModelProfile("qwen3-32b", 32.8e9, 64, 64, 8, 128),
    "tiny-llama": ModelProfile("tiny-llama", 819_840, 2, 4, 2, 32),
}


@dataclass(slots=True)
class StepShape:
    """What a step computes: prefill chunks as (new tokens, tokens already computed) and decode contexts."""

    prefill_chunks: list[tuple[int, int]]
    decode_contexts: list[int]
    num_adapters: int = 0

    @property
    def num_prefill_tokens(self) -> int:
        return sum(n for n, _ in self.prefill_chunks)

    @property
    def num_seqs(self) -> int:
        return len(self.prefill_chunks) + len(self.decode_contexts)


class StepTimeModel(Protocol):
    def step_seconds(self, shape: StepShape) -> float: ...


@dataclass(frozen=True, slots=True)
class LoraOverhead:
    """Punica-style LoRA kernels: each distinct adapter in a batch slows the step by ``per_adapter``."""

    base: StepTimeModel
    per_adapter: float

    def step_seconds(self, shape: StepShape) -> float:
        return self.base.step_seconds(shape) * (1 + self.per_adapter * shape.num_adapters)


@dataclass(frozen=True, slots=True)
class RooflineModel:
    gpu: GpuProfile
    model: ModelProfile

    def step_seconds(self, shape: StepShape) -> float:
        m = self.model
        n_dec = len(shape.decode_contexts)
        dec_ctx = sum(shape.decode_contexts)
        prefill_tokens = 0
        attn_prefill = 0.0
        chunk_ctx = 0
        for n, computed in shape.prefill_chunks:
            prefill_tokens += n
            attn_prefill += n * (computed + n / 2)
            chunk_ctx += computed
        overhead_ms = 0.126 + 0.032 * m.layers + 0.0044 * shape.num_seqs
        flops = 2 * m.parameters * (prefill_tokens + n_dec) + 4 * m.layers * m.query_heads * m.head_dim * (
            attn_prefill + dec_ctx
        )
        traffic = m.weight_bytes + m.kv_bytes_per_token * (dec_ctx + chunk_ctx + prefill_tokens + n_dec)
        compute_s = flops / (self.gpu.peak_tflops * 1e12 * self.gpu.mfu)
        memory_s = traffic / (self.gpu.bandwidth_tbps * 1e12 * 0.8)
        return overhead_ms / 1000 + max(compute_s, memory_s)

    def kv_cache_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        free = gpu_memory_utilization * self.gpu.memory_gib * GIB - self.model.weight_bytes - 2 * GIB
        return max(0, int(free // self.model.kv_bytes_per_token))


@dataclass(frozen=True, slots=True)
class PerTokenModel:
    """Linear model: ``itl`` per step, plus ``prefill_overhead + prefill_per_token * n`` when prefilling.

    ``constant`` mode is this with ``prefill_per_token = 0`` and ``prefill_overhead = ttft - itl``.
    """

    inter_token_seconds: float
    prefill_overhead_seconds: float
    prefill_per_token_seconds: float

    def step_seconds(self, shape: StepShape) -> float:
        prefill = shape.num_prefill_tokens
        if prefill == 0:
            return self.inter_token_seconds
        return (
            self.inter_token_seconds
            + self.prefill_overhead_seconds
            + self.prefill_per_token_seconds * prefill
        )


def build_step_model(
    perf_model: str,
    gpu: str,
    model_profile: str,
    time_to_first_token_ms: float,
    inter_token_latency_ms: float,
    prefill_overhead_ms: float,
    prefill_time_per_token_ms: float,
) -> StepTimeModel:
    if perf_model == "roofline":
        return RooflineModel(gpu_profile(gpu), model_profile_named(model_profile))
    if perf_model == "constant":
        return PerTokenModel(
            inter_token_latency_ms / 1000,
            max(0.0, time_to_first_token_ms - inter_token_latency_ms) / 1000,
            0.0,
        )
    if perf_model == "per-token":
        return PerTokenModel(
            inter_token_latency_ms / 1000, prefill_overhead_ms / 1000, prefill_time_per_token_ms / 1000
        )
    raise ValueError(f"unknown perf model {perf_model!r}; choose roofline, per-token or constant")


def gpu_profile(name: str) -> GpuProfile:
    try:
        return GPU_PROFILES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown GPU profile {name!r}; choose one of {', '.join(GPU_PROFILES)}") from None


def model_profile_named(name: str) -> ModelProfile:
    try:
        return MODEL_PROFILES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model profile {name!r}; choose one of {', '.join(MODEL_PROFILES)}"
        ) from None
