"""Offline twin of ``test_kv_vs_real_vllm``: replays a recorded real vLLM 0.32 run (no engine needed)."""

from __future__ import annotations

from tests.engine_sim.kv_differential import RECORDING, Recording, assert_same_events, workload


def test_recording_is_of_the_current_workload() -> None:
    recording = Recording.load(RECORDING)
    assert [(j.prompt, j.max_tokens) for j in recording.jobs] == [
        (j.prompt, j.max_tokens) for j in workload()
    ]


def test_simulated_cache_reproduces_recorded_vllm_events() -> None:
    assert_same_events(Recording.load(RECORDING))
