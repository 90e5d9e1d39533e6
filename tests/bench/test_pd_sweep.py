"""bench/pd_sweep.py: the simulator's scheduler and roofline driven without HTTP, colocated vs P/D."""

from __future__ import annotations

from brixmesh.engine_sim.timing import StepShape
from pd_sweep import STEP_MODEL, simulate


def test_colocated_decodes_wait_for_prefill_chunks_and_disaggregated_ones_do_not() -> None:
    chunk_s = STEP_MODEL.step_seconds(StepShape([(2048, 10000)], []))
    colocated = simulate("colocated", rate=12.0, output_len=64, budget=2048, duration=2.0)
    disaggregated = simulate("1P1D", rate=12.0, output_len=64, budget=2048, duration=2.0)
    for point in (colocated, disaggregated):
        assert len(point.ttfts) == 24 and point.output_tokens == 24 * 64
    assert max(colocated.gaps) >= chunk_s  # a decode that shared its step with a prefill chunk
    assert max(disaggregated.gaps) < chunk_s / 2
