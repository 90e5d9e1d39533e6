"""The router's per-window request shapes: (input, output) length buckets of completed requests."""

from __future__ import annotations

from brixmesh.common.messages import ShapeCount
from brixmesh.common.shapes import MAX_BUCKET, bucket_tokens, length_bucket
from brixmesh.router.stats import StatsCollector


def test_length_buckets_are_powers_of_two_and_capped() -> None:
    assert [length_bucket(n) for n in (0, 1, 2, 3, 4, 5, 128, 129)] == [0, 0, 1, 2, 2, 3, 7, 8]
    assert bucket_tokens(length_bucket(2000)) == 2048
    assert length_bucket(10**9) == MAX_BUCKET


def test_completed_requests_are_counted_by_shape_and_the_window_resets() -> None:
    stats = StatsCollector("r1")
    for prompt, completion in ((100, 60), (120, 64), (2000, 200)):
        stats.arrived("m")
        stats.finished("m", True, prompt, completion)
    stats.arrived("m")
    stats.finished("m", False, 100, 0)  # a failure has no shape
    stats.arrived("m")
    stats.finished("m", True, 0, 5)  # no usage reported: shape unknown
    (record,) = stats.snapshot()
    assert sorted(record.shapes, key=lambda s: s.input_bucket) == [ShapeCount(7, 6, 2), ShapeCount(11, 8, 1)]
    stats.arrived("m")
    (record,) = stats.snapshot()
    assert record.shapes == []
