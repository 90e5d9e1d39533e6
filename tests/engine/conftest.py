"""Loads the real-vLLM plugin for these tests until tests/conftest.py lists it in ``pytest_plugins``."""

from __future__ import annotations

import pytest

VLLM_PLUGIN = "tests.plugins.vllm_engine"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(VLLM_PLUGIN):
        config.pluginmanager.import_plugin(VLLM_PLUGIN)
