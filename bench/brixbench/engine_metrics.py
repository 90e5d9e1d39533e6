"""Engine-side numbers during a run: prefix-cache hit rate, queue lengths, preemptions (vLLM ``/metrics``).

:func:`parse_metrics` is pure (Prometheus text -> sums per metric name); :class:`EngineScraper` polls every
engine while a run is in flight and keeps the first and last counters and every gauge sample.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self

import aiohttp

COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
            "vllm:request_success_total")
GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running")
WANTED = frozenset(COUNTERS + GAUGES)


def parse_metrics(text: str, wanted: frozenset[str] = WANTED) -> dict[str, float]:
    """Sum of every sample of each wanted metric (over label sets), from Prometheus exposition text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = line.find("{")
        space = line.rfind(" ")
        name = line[:name_end] if 0 < name_end < space else line[:space]
        if name in wanted:
            try:
                out[name] = out.get(name, 0.0) + float(line[space + 1 :])
            except ValueError:
                continue
    return out


@dataclass(slots=True)
class EngineSeries:
    url: str
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    """(time since start, waiting, running)."""
    failures: int = 0

    def delta(self, name: str) -> float:
        return self.last.get(name, 0.0) - self.first.get(name, 0.0)


@dataclass(frozen=True, slots=True)
class FleetNumbers:
    hit_rate: float
    """Delta prefix_cache_hits / delta prefix_cache_queries over all engines."""
    preemptions: float
    mean_waiting: float
    """Mean over samples of the per-engine waiting queue (averaged over engines)."""
    max_waiting: float
    requests_share: tuple[float, ...]
    """Share of the prefix-cache queries (prompt tokens) per engine: how evenly the router spread the work."""
    requests: tuple[float, ...] = ()
    """Requests each engine finished (its ``request_success_total``)."""

    @property
    def busiest_over_mean(self) -> float:
        """Most requests on one engine / the mean per engine (1.0: perfectly even)."""
        total = sum(self.requests)
        return max(self.requests) * len(self.requests) / total if total > 0 else math.nan


def fleet_numbers(series: Sequence[EngineSeries]) -> FleetNumbers:
    queries = sum(s.delta(COUNTERS[0]) for s in series)
    hits = sum(s.delta(COUNTERS[1]) for s in series)
    waiting = [w for s in series for (_, w, _) in s.samples]
    per_engine = [s.delta(COUNTERS[0]) for s in series]
    return FleetNumbers(
        hit_rate=hits / queries if queries > 0 else math.nan,
        preemptions=sum(s.delta(COUNTERS[2]) for s in series),
        mean_waiting=sum(waiting) / len(waiting) if waiting else math.nan,
        max_waiting=max(waiting) if waiting else math.nan,
        requests_share=tuple(q / queries if queries > 0 else math.nan for q in per_engine),
        requests=tuple(s.delta(COUNTERS[3]) for s in series),
    )


class EngineScraper:
    """Polls ``/metrics`` of every engine every ``interval_s`` (wall) until stopped."""

    def __init__(self, urls: Sequence[str], interval_s: float = 0.5) -> None:
        self.series = [EngineSeries(url) for url in urls]
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    async def _scrape(self, session: aiohttp.ClientSession, s: EngineSeries) -> None:
        try:
            async with session.get(f"{s.url}/metrics") as response:
                text = await response.text()
        except (TimeoutError, aiohttp.ClientError):
            s.failures += 1
            return
        values = parse_metrics(text)
        if not s.first:
            s.first = values
        s.last = values
        s.samples.append((time.monotonic() - self._started,
                          values.get(GAUGES[0], 0.0), values.get(GAUGES[1], 0.0)))

    async def _scrape_all(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._scrape(session, s) for s in self.series))

    async def __aenter__(self) -> Self:
        self._started = time.monotonic()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        await self._scrape_all(self._session)
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._scrape_all(self._session)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._scrape_all(self._session)  # final counters after the last request finished
        await self._session.close()
