"""Everything one simulated engine is configured with (built from the CLI, one per replica)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from brixmesh.engine_sim.faults import Faults
from brixmesh.engine_sim.kv_events_config import KvEventsConfig
from brixmesh.engine_sim.kv_transfer import KvTransferConfig
from brixmesh.engine_sim.parallel import GroupShape


@dataclass(slots=True)
class EngineConfig:
    model: str
    served_model_names: list[str]
    tokenizer_dir: Path
    chat_template: str | None = None
    host: str = "127.0.0.1"
    api_key: str | None = None
    port: int = 8000
    replica_index: int = 0
    max_model_len: int = 2048
    block_size: int = 16
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    num_gpu_blocks_override: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    prefix_caching_hash_algo: str = "sha256"
    long_prefill_token_threshold: int = 0
    enable_lora: bool = False
    max_loras: int = 1
    lora_step_overhead: float = 0.05
    lora_modules: list[tuple[str, str]] = field(default_factory=list)
    kv_events_config: KvEventsConfig | None = None
    kv_events_encoding: Literal["map", "array"] = "map"
    enable_prompt_tokens_details: bool = False
    enable_scale_out: bool = False
    perf_model: str = "roofline"
    gpu: str = "h100"
    model_profile: str = "llama-8b"
    time_to_first_token_ms: float = 0.0
    inter_token_latency_ms: float = 0.0
    prefill_overhead_ms: float = 0.0
    prefill_time_per_token_ms: float = 0.0
    time_scale: float = 1.0
    eos_probability: float = 0.0
    seed: int = 0
    metrics_flavor: str = "vllm"
    legacy_metrics: bool = False
    max_waiting_queue_length: int | None = None
    kv_transfer_config: str | None = None
    """``--kv-transfer-config`` as given (JSON); ``kv_tier`` reads the KV tier connector's part."""
    kv_transfer: KvTransferConfig | None = None
    kv_transfer_overhead_ms: float = 2.0
    kv_transfer_per_token_us: float | None = None
    """None: the model profile's KV bytes per token over the GPU profile's KV link."""
    startup_delay_s: float = 0.0
    faults: Faults = field(default_factory=Faults)
    group: GroupShape = GroupShape()
    """Tensor/pipeline parallel shape: one engine over several GPUs (and nodes)."""

    @property
    def served_model_name(self) -> str:
        return self.served_model_names[0]
