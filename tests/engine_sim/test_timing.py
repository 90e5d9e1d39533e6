"""Roofline step times against the reference figures (Llama-3.1-8B) and the simple modes."""

from __future__ import annotations

import pytest
from brixmesh.engine_sim.timing import PerTokenModel, RooflineModel, StepShape, build_step_model, gpu_profile
from brixmesh.engine_sim.timing import model_profile_named as model


def roofline(gpu: str) -> RooflineModel:
    return RooflineModel(gpu_profile(gpu), model("llama-8b"))


@pytest.mark.parametrize(
    ("gpu", "ttft_1k", "ttft_4k", "b1", "b32", "b128"),
    [("h100", 0.032, 0.130, 0.0072, 0.0105, 0.0205), ("a100", 0.084, 0.347, 0.011, 0.016, 0.033)],
)
def test_reference_figures_within_15_percent(gpu, ttft_1k, ttft_4k, b1, b32, b128) -> None:
    m = roofline(gpu)
    assert m.step_seconds(StepShape([(1024, 0)], [])) == pytest.approx(ttft_1k, rel=0.15)
    assert m.step_seconds(StepShape([(4096, 0)], [])) == pytest.approx(ttft_4k, rel=0.15)
    assert m.step_seconds(StepShape([], [1024])) == pytest.approx(b1, rel=0.15)
    assert m.step_seconds(StepShape([], [2048] * 32)) == pytest.approx(b32, rel=0.15)
    assert m.step_seconds(StepShape([], [2048] * 128)) == pytest.approx(b128, rel=0.15)


def test_kv_capacity_h100_llama_8b() -> None:
    assert roofline("h100").kv_cache_tokens() == pytest.approx(450_000, rel=0.05)


def test_prefill_chunk_stalls_decodes_and_context_costs() -> None:
    m = roofline("a10")
    decode_only = m.step_seconds(StepShape([], [2048] * 8))
    with_chunk = m.step_seconds(StepShape([(2048, 0)], [2048] * 8))
    assert with_chunk > 3 * decode_only
    # attention over already-computed context is still paid
    assert m.step_seconds(StepShape([(512, 3584)], [])) > m.step_seconds(StepShape([(512, 0)], []))


def test_constant_and_per_token_modes() -> None:
    const = build_step_model("constant", "h100", "llama-8b", 50.0, 10.0, 0.0, 0.0)
    assert const.step_seconds(StepShape([], [100])) == pytest.approx(0.010)
    assert const.step_seconds(StepShape([(999, 0)], [])) == pytest.approx(0.050)
    per_token = PerTokenModel(0.01, 0.005, 0.0001)
    assert per_token.step_seconds(StepShape([(100, 0)], [5])) == pytest.approx(0.01 + 0.005 + 0.01)


def test_unknown_profiles_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown GPU profile"):
        gpu_profile("tpu")
    with pytest.raises(ValueError, match="unknown perf model"):
        build_step_model("magic", "h100", "llama-8b", 0, 0, 0, 0)


def test_lora_overhead_per_distinct_adapter() -> None:
    from brixmesh.engine_sim.timing import LoraOverhead

    base = PerTokenModel(0.010, 0.0, 0.0)
    model = LoraOverhead(base, 0.05)
    assert model.step_seconds(StepShape([], [10], num_adapters=0)) == pytest.approx(0.010)
    assert model.step_seconds(StepShape([], [10, 10], num_adapters=2)) == pytest.approx(0.011)
