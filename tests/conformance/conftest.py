"""The conformance suite runs every test against the simulator and against a real vLLM 0.32 (CPU) engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engine_sim.sim_engine import SimEngine, sim_engine

VLLM_PLUGIN = "tests.plugins.vllm_engine"


def pytest_configure(config: pytest.Config) -> None:
    # Until tests/conftest.py loads the real-vLLM plugin for everyone, load it here.
    if not config.pluginmanager.has_plugin(VLLM_PLUGIN):
        config.pluginmanager.import_plugin(VLLM_PLUGIN)


@pytest.fixture(scope="session")
def sim() -> Iterator[SimEngine]:
    with sim_engine() as engine:
        yield engine


@pytest.fixture(params=["sim", pytest.param("vllm", marks=pytest.mark.vllm)])
def engine(request: pytest.FixtureRequest):
    """Either engine behind the same handle shape (base_url, model, kv endpoints, block_size, lora_dirs)."""
    return request.getfixturevalue("sim" if request.param == "sim" else "real_vllm")
