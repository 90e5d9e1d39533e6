"""A LoopHistogram exposes exactly what prometheus_client's Histogram exposes for the same observations."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from brixmesh.common.metrics import LoopHistogram

BUCKETS = (0.00005, 0.0001, 0.00025, 0.001, 0.25)


def test_exposition_matches_prometheus_clients_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopHistogram("decision_seconds", "Time to decide", BUCKETS, registry=ours)
    reference = Histogram("decision_seconds", "Time to decide", buckets=BUCKETS, registry=theirs)
    # on a bound (bounds are inclusive), between bounds, under the first and over the last
    for amount in (0.00005, 0.00007, 0.0, 0.0001, 0.3, 0.001, 0.0009, 7.0):
        fast.observe(amount)
        reference.observe(amount)
    assert fast.count == 8

    def series(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert series(ours) == series(theirs)


def test_a_name_registered_twice_is_refused() -> None:
    registry = CollectorRegistry()
    LoopHistogram("lookup_seconds", "Lookups", BUCKETS, registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoopHistogram("lookup_seconds", "Lookups", BUCKETS, registry=registry)


@pytest.mark.parametrize("buckets", [(), (0.1, 0.1), (0.1, float("inf"))])
def test_bad_buckets_are_refused(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="buckets must be distinct finite bounds"):
        LoopHistogram("x_seconds", "x", buckets)
