"""Latency and throughput statistics, as vLLM's ``benchmark_serving`` defines them. Pure.

All times here are modelled seconds (wall seconds divided by the fleet's time scale).
TTFT: send -> first non-empty chunk. ITL: every gap between chunks, pooled over requests. TPOT: per request
(E2E - TTFT) / (n_out - 1). Goodput: requests per second meeting every SLO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    job_id: str
    turn: int
    sent_s: float
    """Send time since the run started."""
    ok: bool = False
    error: str = ""
    ttft_s: float | None = None
    e2e_s: float | None = None
    chunk_gaps_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int | None = None
    target: str = ""
    """Which engine served it, when the contender says (oracle, x-brixmesh-pod...)."""
    prompt: Any = None
    """The prompt as sent (chat messages or text): what cache bounds are computed on after the run."""
    answer: str = ""

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Distribution:
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        mean = sum(values) / len(values) if values else math.nan
        return cls(mean, percentile(values, 50), percentile(values, 90), percentile(values, 95),
                   percentile(values, 99), len(values))


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def met(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        if self.ttft_s is not None and (record.ttft_s is None or record.ttft_s > self.ttft_s):
            return False
        tpot = record.tpot_s
        if self.tpot_s is not None and tpot is not None and tpot > self.tpot_s:
            return False
        return not (self.e2e_s is not None and (record.e2e_s is None or record.e2e_s > self.e2e_s))


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    succeeded: int
    duration_s: float
    ttft: Distribution
    itl: Distribution
    tpot: Distribution
    e2e: Distribution
    request_throughput: float
    output_throughput: float
    total_throughput: float
    goodput: float
    success_rate: float
    client_cached_fraction: float | None
    """Share of prompt tokens the engines reported as cached (``usage.prompt_tokens_details``), if reported."""


def summarize(records: Sequence[RequestRecord], duration_s: float, slo: Slo | None = None) -> Summary:
    done = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    in_tokens = sum(r.prompt_tokens for r in done)
    span = duration_s if duration_s > 0 else math.nan
    reported = [r for r in done if r.cached_tokens is not None]
    reported_prompt = sum(r.prompt_tokens for r in reported)
    return Summary(
        requests=len(records),
        succeeded=len(done),
        duration_s=duration_s,
        ttft=Distribution.of([r.ttft_s for r in done if r.ttft_s is not None]),
        itl=Distribution.of([gap for r in done for gap in r.chunk_gaps_s]),
        tpot=Distribution.of([t for r in done if (t := r.tpot_s) is not None]),
        e2e=Distribution.of([r.e2e_s for r in done if r.e2e_s is not None]),
        request_throughput=len(done) / span,
        output_throughput=out_tokens / span,
        total_throughput=(out_tokens + in_tokens) / span,
        goodput=sum(1 for r in records if (slo or Slo()).met(r)) / span,
        success_rate=len(done) / len(records) if records else math.nan,
        client_cached_fraction=(sum(r.cached_tokens or 0 for r in reported) / reported_prompt
                                if reported and reported_prompt else None),
    )
