"""Turns successive raw scrapes of one engine into normalized :class:`PodMetrics`.

Rates come from counter deltas over ``rate_window_s``; quantiles from histogram bucket deltas over the
longer ``quantile_window_s`` (a 250 ms interval rarely holds enough requests for a p90). A counter that
goes down means the engine restarted: the history is dropped and rates start again from the next scrape.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from brixmesh.autoscaler.flavors import FLAVORS, Flavor
from brixmesh.autoscaler.promtext import RawScrape
from brixmesh.common.messages import PodInfo, PodMetrics


@dataclass(frozen=True, slots=True)
class _Point:
    ts: float
    prefix_queries: float
    prefix_hits: float
    prompt_tokens: float
    generation_tokens: float
    preemptions: float
    ttft: dict[float, float]
    itl: dict[float, float]


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus ``histogram_quantile`` on cumulative ``{le: count}``: linear inside the bucket; in the
    +Inf bucket, the highest finite bound. 0 when the histogram holds no observations."""
    bounds = sorted(buckets)
    if not bounds:
        return 0.0
    total = buckets[bounds[-1]]
    if total <= 0:
        return 0.0
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _delta_buckets(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {le: count - old.get(le, 0.0) for le, count in new.items()}


class PodMetricsDeriver:
    def __init__(self, pod: PodInfo, *, rate_window_s: float = 2.0, quantile_window_s: float = 10.0) -> None:
        self.pod = pod
        self.rate_window_s = rate_window_s
        self.quantile_window_s = quantile_window_s
        self._history: deque[_Point] = deque()

    def stale(self, ts: float) -> PodMetrics:
        return PodMetrics(
            pod=self.pod.pod, model=self.pod.model, deployment=self.pod.deployment, ts=ts, stale=True
        )

    def update(self, raw: RawScrape, ts: float) -> PodMetrics:
        flavor = FLAVORS[raw.flavor]
        point = self._point(raw, flavor, ts)
        if self._history and self._went_backwards(self._history[-1], point):
            self._history.clear()
        self._history.append(point)
        while len(self._history) > 2 and ts - self._history[1].ts >= self.quantile_window_s:
            self._history.popleft()
        rate_base = self._oldest_within(ts, self.rate_window_s)
        quantile_base = self._history[0] if len(self._history) > 1 else None
        metrics = PodMetrics(
            pod=self.pod.pod,
            model=self.pod.model,
            deployment=self.pod.deployment,
            ts=ts,
            stale=False,
            running=raw.gauge(flavor.running) or 0.0,
            waiting=raw.gauge(flavor.waiting) or 0.0,
            kv_usage=raw.gauge(flavor.kv_usage, mean=True) or 0.0,
            engine_flavor=flavor.name,
        )
        if rate_base is not None:
            elapsed = ts - rate_base.ts
            queries = point.prefix_queries - rate_base.prefix_queries
            metrics.prefix_hit_rate = (
                (point.prefix_hits - rate_base.prefix_hits) / queries if queries > 0 else 0.0
            )
            metrics.prompt_tokens_per_s = (point.prompt_tokens - rate_base.prompt_tokens) / elapsed
            metrics.generation_tokens_per_s = (
                point.generation_tokens - rate_base.generation_tokens
            ) / elapsed
            metrics.preemptions_per_s = (point.preemptions - rate_base.preemptions) / elapsed
        if quantile_base is not None:
            ttft = _delta_buckets(point.ttft, quantile_base.ttft)
            itl = _delta_buckets(point.itl, quantile_base.itl)
            metrics.ttft_p50_s = histogram_quantile(0.5, ttft)
            metrics.ttft_p90_s = histogram_quantile(0.9, ttft)
            metrics.itl_p50_s = histogram_quantile(0.5, itl)
            metrics.itl_p90_s = histogram_quantile(0.9, itl)
        return metrics

    def _oldest_within(self, ts: float, window_s: float) -> _Point | None:
        """The oldest earlier point not older than ``window_s`` (else the newest earlier one)."""
        if len(self._history) < 2:
            return None
        chosen = self._history[-2]
        for point in reversed(self._history):
            if point is self._history[-1]:
                continue
            if ts - point.ts > window_s:
                break
            chosen = point
        return chosen if chosen.ts < ts else None

    @staticmethod
    def _point(raw: RawScrape, flavor: Flavor, ts: float) -> _Point:
        return _Point(
            ts=ts,
            prefix_queries=raw.counter(flavor.prefix_queries) or 0.0,
            prefix_hits=raw.counter(flavor.prefix_hits) or 0.0,
            prompt_tokens=raw.counter(flavor.prompt_tokens) or 0.0,
            generation_tokens=raw.counter(flavor.generation_tokens) or 0.0,
            preemptions=raw.counter(flavor.preemptions) or 0.0,
            ttft=raw.histogram(flavor.ttft) or {},
            itl=raw.histogram(flavor.itl) or {},
        )

    @staticmethod
    def _went_backwards(old: _Point, new: _Point) -> bool:
        return new.prompt_tokens < old.prompt_tokens or new.generation_tokens < old.generation_tokens
