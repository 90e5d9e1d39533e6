"""Engine-simulator tests; the real-vLLM differential test needs the vLLM engine plugin."""

from __future__ import annotations

import pytest

VLLM_PLUGIN = "tests.plugins.vllm_engine"


def pytest_configure(config: pytest.Config) -> None:
    # Until tests/conftest.py loads the real-vLLM plugin for everyone, load it here.
    if not config.pluginmanager.has_plugin(VLLM_PLUGIN):
        config.pluginmanager.import_plugin(VLLM_PLUGIN)
