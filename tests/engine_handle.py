"""What tests read of a running engine, simulated (``tests.engine_sim.sim_engine``) or real
(``tests.plugins.vllm_engine``): conformance tests take either."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EngineHandle:
    base_url: str
    model: str
    kv_events_endpoint: str
    kv_replay_endpoint: str
    topic: str
    block_size: int
    num_blocks: int
    max_model_len: int
    model_dir: Path
    lora_dirs: dict[str, Path] = field(hash=False)
    pid: int
