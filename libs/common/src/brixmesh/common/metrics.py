"""Metrics for per-request hot paths.

prometheus_client's ``Histogram.observe`` takes a lock for the sum and for each bucket it updates, and finds
the bucket in a Python loop: about three times the cost of a bisection and two additions, paid on every
request. A :class:`LoopHistogram` is observed from one thread only (a service's event loop), so it needs no
lock; it is exposed to Prometheus as an ordinary histogram.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LoopHistogram(Collector):
    """A histogram without labels, observed from one thread (``observe`` has no lock); scrapes may run on
    another thread and see a count and a sum from slightly different moments."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = sorted(float(bound) for bound in buckets)
        if not bounds or len(set(bounds)) != len(bounds) or bounds[-1] == float("inf"):
            raise ValueError(f"{name}: buckets must be distinct finite bounds")
        self.name = name
        self._documentation = documentation
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)
        """Observations per bucket, not cumulative; the last one is above every bound (``+Inf``)."""
        self._sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    @property
    def count(self) -> int:
        return sum(self._counts)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts = list(self._counts)
        cumulative = []
        total = 0
        for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
            total += count
            cumulative.append((floatToGoString(bound), total))
        yield HistogramMetricFamily(self.name, self._documentation, buckets=cumulative, sum_value=self._sum)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self._documentation)
