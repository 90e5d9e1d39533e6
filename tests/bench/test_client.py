"""The load client against a real simulated engine: chat history, closed loop, engine scrapes, errors."""

import pytest
from brixbench.arrivals import ClosedLoop, poisson
from brixbench.client import FixedTarget, LoadClient
from brixbench.text import TextSource
from brixbench.workloads import Job, multi_turn

from tests.engine_sim.sim_engine import MODEL_NAME, sim_engine


@pytest.fixture(scope="module")
def engine():
    with sim_engine(kv_events=False) as handle:
        yield handle


async def test_multi_turn_resends_history_in_a_closed_loop(engine):
    jobs = multi_turn(TextSource(), sessions=4, turn_len_mean=20, turn_len_std=5, output_len=3, seed=5)
    turns = sum(len(job.turns) for job in jobs)
    done = []
    result = await LoadClient(MODEL_NAME).run(jobs, ClosedLoop(2), FixedTarget(engine.base_url),
                                              engine_urls=[engine.base_url], on_request_done=lambda: done.append(1))
    assert len(result.records) == turns == len(done)
    assert all(r.ok and r.output_tokens == 3 and r.ttft_s is not None for r in result.records)
    for job in jobs:
        prompts = [r.prompt_tokens for r in result.records if r.job_id == job.id]
        assert prompts == sorted(prompts) and len(set(prompts)) == len(prompts)  # the history grows every turn
    assert result.summary.succeeded == turns and result.summary.output_throughput > 0
    assert result.engines.hit_rate > 0  # later turns hit the cached history
    assert result.engines.requests_share == (1.0,)
    assert result.waiting_timeline and result.waiting_timeline[0][0] == pytest.approx(0.0, abs=0.5)


async def test_failed_requests_are_recorded_with_their_error(engine):
    jobs = [Job("big", "", ("word " * 5000,), (2,))]  # longer than the engine's max_model_len
    result = await LoadClient(MODEL_NAME).run(jobs, poisson(10.0, 1), FixedTarget(engine.base_url))
    (record,) = result.records
    assert not record.ok and record.error.startswith("HTTP 400")
    assert result.summary.success_rate == 0.0
