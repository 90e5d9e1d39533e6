"""Live traffic histograms from router stats, over a sliding window."""

from __future__ import annotations

import pytest
from brixmesh.autoscaler.load_shape import LoadShape
from brixmesh.common.messages import RouterStats, ShapeCount


def stats(router: str, ts: float, shapes: list[ShapeCount], window_s: float = 1.0) -> RouterStats:
    return RouterStats(router=router, model="m", ts=ts, window_s=window_s, arrivals=0, completions=0,
                       failures=0, in_flight=0, queued=0, prompt_tokens=0, completion_tokens=0, shapes=shapes)


def test_rates_sum_routers_over_the_time_each_one_covers() -> None:
    shape = LoadShape(window_s=10)
    for t in range(1, 5):  # router a: 4 s with 2 short requests each second
        shape.record(stats("a", 100 + t, [ShapeCount(7, 6, 2)]))
    shape.record(stats("b", 104, [ShapeCount(7, 6, 3), ShapeCount(11, 8, 1)], window_s=2.0))  # b joined late
    rates = shape.rates(104.5)
    assert rates[(7, 6)] == pytest.approx(2.0 + 1.5)
    assert rates[(11, 8)] == pytest.approx(0.5)
    assert shape.covered_s(104.5) == pytest.approx(4.0)


def test_old_stats_leave_the_window() -> None:
    shape = LoadShape(window_s=5)
    shape.record(stats("a", 100, [ShapeCount(7, 6, 10)]))
    shape.record(stats("a", 104, [ShapeCount(11, 8, 1)]))
    assert set(shape.rates(104.5)) == {(7, 6), (11, 8)}
    assert shape.rates(105.5) == {(11, 8): pytest.approx(1.0)}
    assert shape.rates(200) == {}
    assert shape.covered_s(200) == 0
