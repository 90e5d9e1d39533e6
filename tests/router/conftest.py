"""Router test fixtures: simulated engines, and real router processes over real NATS."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.engine_sim.sim_engine import SimEngine, sim_engine


@pytest.fixture(scope="module")
def sims() -> Iterator[SimEngine]:
    """Two simulated tiny-llama engines (one process, constant 5 ms TTFT, 2 ms ITL), adapter ``lora-a`` loaded."""
    with sim_engine(replicas=2, kv_events=False) as engines:
        for url in engines.urls:
            loaded = httpx.post(
                f"{url}/v1/load_lora_adapter",
                json={"lora_name": "lora-a", "lora_path": str(engines.lora_dirs["lora-a"])},
            )
            assert loaded.status_code == 200, loaded.text
        yield engines
