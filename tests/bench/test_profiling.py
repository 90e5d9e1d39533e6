"""GPU profiles: the rate search (pure), the SLO verdict (pure), and profiles recorded from the simulator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from brixbench.fleet import TOKENIZER_DIR, Fleet, FleetSpec
from brixbench.profiling import (
    RateSearch,
    SweepSettings,
    Verdict,
    profile_engine,
    queue_built_up,
    slo_verdict,
)
from brixbench.stats import RequestRecord
from brixbench.text import TextSource, single_token_words
from brixmesh.common.messages import Slo
from brixmesh.common.shapes import length_bucket


def search_against(capacity: float, start: float, precision: float = 0.1) -> tuple[float, list[float]]:
    search = RateSearch(start, precision=precision, min_rate=0.05, max_rate=512)
    tried = []
    while (rate := search.next_rate()) is not None:
        tried.append(rate)
        search.record(rate, rate <= capacity)
    return search.best, tried


@pytest.mark.parametrize("capacity,start", [(7.3, 1.0), (7.3, 100.0), (0.4, 1.0), (300.0, 2.0)])
def test_rate_search_ends_within_precision_below_the_capacity(capacity: float, start: float) -> None:
    best, tried = search_against(capacity, start)
    assert capacity / 1.1 <= best <= capacity
    assert len(tried) <= 12


def test_rate_search_reports_zero_when_even_the_lowest_rate_fails() -> None:
    best, tried = search_against(0.01, 1.0)
    assert best == 0 and min(tried) >= 0.05


def test_rate_search_stops_at_max_rate() -> None:
    best, _ = search_against(10_000, 128.0)
    assert best == 512


def test_rate_search_survives_a_lower_rate_failing_after_a_higher_one_passed() -> None:
    search = RateSearch(4.0, precision=0.1, min_rate=0.05, max_rate=512)
    search.record(4.0, True)
    search.record(8.0, False)
    search.record(5.6569, False)
    search.record(4.7568, True)
    search.record(5.1874, False)
    assert search.next_rate() is None and search.best == 4.7568
    search = RateSearch(4.0, precision=0.1, min_rate=0.05, max_rate=512)
    search.record(4.0, True)
    search.record(3.0, False)  # noise: below a passing rate
    assert search.next_rate() is None and search.best == 4.0


def record(ttft: float, e2e: float, tokens: int = 11, ok: bool = True) -> RequestRecord:
    return RequestRecord("j", 0, 0.0, ok=ok, ttft_s=ttft, e2e_s=e2e, output_tokens=tokens)


def test_slo_verdict_reads_the_percentile_of_ttft_and_tpot() -> None:
    slo = Slo(ttft_s=0.5, tpot_s=0.05, percentile=90)
    fast = [record(0.1, 0.1 + 10 * 0.02) for _ in range(18)]
    assert slo_verdict(fast, slo).ok
    slow_tail = fast + [record(0.1, 0.1 + 10 * 0.09)] * 4  # 4 of 22 over the TPOT bound: p90 is over
    verdict = slo_verdict(slow_tail, slo)
    assert not verdict.ok and verdict.tpot_s > 0.05
    one_failure = fast + [record(0.1, 0.2, ok=False)]
    assert not slo_verdict(one_failure, slo).ok
    assert slo_verdict(fast + [record(0.9, 1.1)], slo).ok  # one slow TTFT in 19 is above p90
    assert not slo_verdict(fast + [record(0.9, 1.1)] * 3, slo).ok
    assert math.isnan(slo_verdict([], slo).ttft_s) and not slo_verdict([], slo).ok


def test_a_failed_trial_is_tried_again_only_without_a_queue() -> None:
    slo = Slo(ttft_s=1.0, tpot_s=0.05)
    assert not queue_built_up(Verdict(False, 1.2, 0.2, 0), slo)  # slow tokens: maybe the host, try again
    assert queue_built_up(Verdict(False, 3.5, 0.06, 0), slo)
    assert queue_built_up(Verdict(False, math.inf, math.inf, 0), slo)  # backlog left after the trial


SHORT_IN, LONG_IN, SHORT_OUT, LONG_OUT = 256, 2048, 32, 256


async def test_profiles_from_the_simulator_are_monotone_and_reproducible(tmp_path: Path) -> None:
    """A10 (simulated): longer prompts or outputs never get a higher rate; a rerun with the same seed lands
    on the same rate within the search's precision."""
    source = TextSource(single_token_words(TOKENIZER_DIR / "tokenizer.json"))
    slo = Slo(ttft_s=1.5, tpot_s=0.08, percentile=90)

    def sweep(inputs: tuple[int, ...], outputs: tuple[int, ...]) -> SweepSettings:
        buckets = tuple(length_bucket(n) for n in inputs), tuple(length_bucket(n) for n in outputs)
        return SweepSettings(*buckets, slo, duration_s=15, warmup_s=5, precision=0.3, start_rate=4.0)

    fleet = await Fleet(FleetSpec(engines=1, model="m", gpu="a10", time_scale=0.25, processes=1),
                        tmp_path / "fleet").start()
    url = fleet.urls[0]
    try:
        first = await profile_engine(url, "m", "a10", 1.01, sweep((SHORT_IN, LONG_IN), (SHORT_OUT,)), source,
                                     time_scale=0.25)
        long_out = await profile_engine(url, "m", "a10", 1.01, sweep((SHORT_IN,), (LONG_OUT,)), source,
                                        time_scale=0.25)
        again = await profile_engine(url, "m", "a10", 1.01, sweep((SHORT_IN,), (SHORT_OUT,)), source,
                                     time_scale=0.25)
    finally:
        await fleet.stop()
    rates = {(c.input_bucket, c.output_bucket): c.max_rate for c in first.cells + long_out.cells}
    short, long_prompt = rates[length_bucket(SHORT_IN), 5], rates[length_bucket(LONG_IN), 5]
    assert short > 0 and long_prompt > 0, rates
    assert long_prompt < short, rates
    assert rates[length_bucket(SHORT_IN), length_bucket(LONG_OUT)] < short, rates
    rerun = again.cells[0].max_rate  # the search's grid is 1.3x apart: one step of noise at most
    assert max(short, rerun) <= min(short, rerun) * 1.3 ** 2 + 1e-9, (first.cells, again.cells)
    assert first.slo == slo and first.gpu == "a10" and first.cost_per_hour == 1.01
