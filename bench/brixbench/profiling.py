"""GPU profiles: per (input, output) length bucket, the highest request rate one engine serves within an SLO.

For each bucket the sweep sends requests of the bucket's lengths as Poisson arrivals at a trial rate for
``duration_s`` and checks the SLO's percentile of TTFT and TPOT over the requests sent after ``warmup_s``
(:func:`slo_verdict`). :class:`RateSearch` picks the trial rates: from a start rate it doubles until a rate
fails (or halves until one passes), then bisects geometrically until the failing rate is within
``precision`` of the passing one. The bucket's capacity is the highest passing rate. A failed trial is run
once more (other prompts) unless a queue built up (TTFT over 3x its bound): a busy host only ever slows a
trial down, so one slow trial must not end a search. Arrivals and prompts are seeded by bucket and rate, so
a rerun sends the same requests.

Requests are measured at the bucket's largest lengths (its worst case): ``2**i`` output tokens (with
``ignore_eos``) and ``2**i`` prompt tokens less a few for the tokenizer's boundary tokens.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from brixmesh.common.messages import GpuProfile, ProfileCell, Slo
from brixmesh.common.shapes import bucket_tokens

from brixbench.arrivals import OpenLoop, poisson
from brixbench.client import FixedTarget, LoadClient
from brixbench.engine_metrics import GAUGES, parse_metrics
from brixbench.stats import RequestRecord, percentile
from brixbench.text import TextSource
from brixbench.workloads import Job

QUEUE_TTFT_FACTOR = 3.0
"""A failed trial whose TTFT percentile is this many times the bound had a queue: it is not tried again."""

PROMPT_BOUNDARY_TOKENS = 4
"""Prompt words left out of a bucket's length so BOS and friends keep the prompt inside the bucket."""

# Hourly on-demand prices per GPU (USD): A10G, A100-80G and H100 as Melange used them (AWS per-GPU prices);
# L20 is not sold by the large Western clouds: an assumed price between A10 and A100. Override with --cost.
DEFAULT_COST_PER_HOUR: dict[str, float] = {"a10": 1.01, "l20": 1.50, "a100": 3.67, "h100": 7.52}


@dataclass(frozen=True, slots=True)
class SweepSettings:
    input_buckets: tuple[int, ...]
    output_buckets: tuple[int, ...]
    slo: Slo
    duration_s: float = 30.0
    """Modelled seconds of arrivals per trial rate: long enough that the batch reaches its steady size."""
    warmup_s: float = 10.0
    """Requests sent in the first seconds of a trial (engine filling up) are not judged."""
    min_requests: int = 20
    max_requests: int = 600
    start_rate: float = 1.0
    precision: float = 0.15
    """Stop when the lowest failing rate is at most ``1 + precision`` times the highest passing one."""
    min_rate: float = 0.05
    max_rate: float = 512.0
    seed: int = 0


class RateSearch:
    """Trial rates for one bucket; pure. Call :meth:`next_rate` until it returns None, reporting each
    trial's outcome with :meth:`record`. ``best`` is the highest passing rate (0: none passed)."""

    def __init__(self, start: float, *, precision: float, min_rate: float, max_rate: float) -> None:
        if not 0 < min_rate <= start <= max_rate:
            raise ValueError(f"rate search needs 0 < min_rate <= start <= max_rate, got {min_rate}, {start}, "
                             f"{max_rate}")
        self.precision = precision
        self.min_rate = min_rate
        self.max_rate = max_rate
        self.passing = 0.0
        self.failing = math.inf
        self._next: float | None = start

    @property
    def best(self) -> float:
        return self.passing

    def record(self, rate: float, ok: bool) -> None:
        if ok:
            self.passing = max(self.passing, rate)
        else:
            self.failing = min(self.failing, rate)
        if self.failing <= self.passing:  # noise: a lower rate failed after a higher one passed
            self.failing = self.passing * (1 + self.precision)
        if math.isinf(self.failing):
            doubled = self.passing * 2
            self._next = doubled if doubled <= self.max_rate else None
        elif self.passing == 0:
            halved = self.failing / 2
            self._next = halved if halved >= self.min_rate else None
        elif self.failing <= self.passing * (1 + self.precision):
            self._next = None
        else:
            self._next = math.sqrt(self.passing * self.failing)

    def next_rate(self) -> float | None:
        return None if self._next is None else round(self._next, 4)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    ttft_s: float
    tpot_s: float
    failed: int


def slo_verdict(records: Sequence[RequestRecord], slo: Slo) -> Verdict:
    """The SLO holds when every request succeeded and the percentile of TTFT and of TPOT are within it."""
    done = [r for r in records if r.ok]
    ttft = percentile([r.ttft_s for r in done if r.ttft_s is not None], slo.percentile)
    tpot = percentile([t for r in done if (t := r.tpot_s) is not None], slo.percentile)
    failed = len(records) - len(done)
    ok = bool(done) and failed == 0
    if slo.ttft_s > 0:
        ok = ok and ttft <= slo.ttft_s
    if slo.tpot_s > 0:
        ok = ok and not (tpot > slo.tpot_s)  # NaN (one-token outputs) has no TPOT to violate
    return Verdict(ok, ttft, 0.0 if math.isnan(tpot) else tpot, failed)


def cell_jobs(source: TextSource, input_bucket: int, output_bucket: int, count: int, seed: int) -> list[Job]:
    rng = random.Random(seed)
    prompt_words = max(1, bucket_tokens(input_bucket) - PROMPT_BOUNDARY_TOKENS)
    out = bucket_tokens(output_bucket)
    return [Job(f"p{input_bucket}-{output_bucket}-{i}", "", (source.text(rng, prompt_words),), (out,))
            for i in range(count)]


async def wait_idle(url: str, timeout_s: float = 600.0) -> None:
    """Until the engine runs and queues nothing (a failed trial's backlog must not spill into the next)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while True:
            async with session.get(f"{url}/metrics") as response:
                values = parse_metrics(await response.text())
            busy = sum(values.get(name, 0.0) for name in GAUGES)
            if busy == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} still busy after {timeout_s:.0f}s")
            await asyncio.sleep(0.2)


Report = Callable[[str], None]
Cell = tuple[int, int]


async def trial(client: LoadClient, url: str, source: TextSource, input_bucket: int, output_bucket: int,
                settings: SweepSettings, rate: float, seed: int) -> Verdict:
    """One trial: Poisson arrivals of the bucket's requests for ``duration_s``, judged after the warm-up."""
    count = min(settings.max_requests, max(settings.min_requests, round(rate * settings.duration_s)))
    # fresh prompts per trial: an engine with a large KV cache must not serve a trial from the last one's
    trial_seed = seed + round(rate * 1000) * 7919
    jobs = cell_jobs(source, input_bucket, output_bucket, count, trial_seed)
    arrivals = poisson(rate, len(jobs), trial_seed)
    try:
        limit_s = trial_limit_s(arrivals, settings.slo, output_bucket) * client.time_scale
        result = await asyncio.wait_for(client.run(jobs, arrivals, FixedTarget(url)), limit_s)
    except TimeoutError:
        verdict = Verdict(False, math.inf, math.inf, 0)  # a backlog that outlives the trial: over
    else:
        judged = [r for r in result.records if r.sent_s >= settings.warmup_s] or result.records
        verdict = slo_verdict(judged, settings.slo)
    await wait_idle(url)
    return verdict


def queue_built_up(verdict: Verdict, slo: Slo) -> bool:
    """Requests waited far past the TTFT bound (or outlived the trial): overload, not a slow host."""
    return verdict.ttft_s > QUEUE_TTFT_FACTOR * (slo.ttft_s or 1.0)


def describe(verdict: Verdict, slo: Slo) -> str:
    if math.isinf(verdict.ttft_s):
        return "backlog left after the trial"
    return (f"p{slo.percentile:g} TTFT {verdict.ttft_s * 1000:.0f} ms, TPOT {verdict.tpot_s * 1000:.1f} ms, "
            f"{verdict.failed} failed")


async def warm_up(client: LoadClient, url: str, source: TextSource) -> None:
    """A few requests before the first trial: a freshly started engine's first requests are slow."""
    jobs = cell_jobs(source, 8, 4, 8, seed=-1)
    await client.run(jobs, poisson(4.0, len(jobs), 0), FixedTarget(url))
    await wait_idle(url)


def trial_limit_s(arrivals: OpenLoop, slo: Slo, output_bucket: int) -> float:
    """Modelled seconds after which a trial's backlog means overload: the last arrival, then twice what
    a request may take within the SLO (its TTFT and every output token at the TPOT bound)."""
    tpot = slo.tpot_s or 0.1
    return arrivals.offsets[-1] + 2 * (slo.ttft_s + tpot * bucket_tokens(output_bucket)) + 5


async def profile_cell(client: LoadClient, url: str, source: TextSource, input_bucket: int,
                       output_bucket: int, settings: SweepSettings, start_rate: float,
                       report: Report) -> ProfileCell:
    start = min(max(start_rate, settings.min_rate), settings.max_rate)
    search = RateSearch(start, precision=settings.precision, min_rate=settings.min_rate,
                        max_rate=settings.max_rate)
    best = Verdict(False, 0.0, 0.0, 0)
    seed = settings.seed * 1_000_003 + input_bucket * 1009 + output_bucket
    while (rate := search.next_rate()) is not None:
        verdict = await trial(client, url, source, input_bucket, output_bucket, settings, rate, seed)
        if not verdict.ok and not queue_built_up(verdict, settings.slo):
            # a busy host only ever makes a trial slower: a failure short of a backlog must happen twice
            report(f"in<={bucket_tokens(input_bucket)} out<={bucket_tokens(output_bucket)} {rate:g} req/s: "
                   f"over once ({describe(verdict, settings.slo)}), trying again")
            verdict = await trial(client, url, source, input_bucket, output_bucket, settings, rate, seed + 1)
        search.record(rate, verdict.ok)
        if verdict.ok and rate >= search.best:
            best = verdict
        report(f"in<={bucket_tokens(input_bucket)} out<={bucket_tokens(output_bucket)} {rate:g} req/s: "
               f"{'ok' if verdict.ok else 'over'} ({describe(verdict, settings.slo)})")
    return ProfileCell(input_bucket=input_bucket, output_bucket=output_bucket, max_rate=search.best,
                       ttft_s=round(best.ttft_s, 6), tpot_s=round(best.tpot_s, 6))


def start_rate(cell: Cell, profiled: dict[Cell, ProfileCell], default: float) -> float:
    """Where a bucket's search starts: the rate of the nearest shorter bucket already profiled, scaled by
    their token counts (a request twice as long takes about twice the work), else ``default``."""
    shorter = [c for c, found in profiled.items()
               if c[0] <= cell[0] and c[1] <= cell[1] and found.max_rate > 0]
    if not shorter:
        return default
    nearest = max(shorter)
    work = bucket_tokens(cell[0]) + bucket_tokens(cell[1])
    return profiled[nearest].max_rate * (bucket_tokens(nearest[0]) + bucket_tokens(nearest[1])) / work


async def profile_engine(url: str, model: str, gpu: str, cost_per_hour: float,
                         settings: SweepSettings, source: TextSource, *, time_scale: float = 1.0,
                         engine_source: str = "", only: Sequence[Cell] = (),
                         report: Report = lambda _line: None) -> GpuProfile:
    """Every bucket of ``settings`` (or ``only`` these) against the engine at ``url`` (one replica), shortest
    first, each search starting near where the shorter buckets ended (:func:`start_rate`)."""
    client = LoadClient(model, time_scale=time_scale)
    await warm_up(client, url, source)
    cells: dict[Cell, ProfileCell] = {}
    grid = only or [(i, o) for i in settings.input_buckets for o in settings.output_buckets]
    for cell in sorted(grid, key=lambda c: (c[0] + c[1], c)):
        start = start_rate(cell, cells, settings.start_rate)
        cells[cell] = await profile_cell(client, url, source, cell[0], cell[1], settings, start, report)
    return GpuProfile(model=model, gpu=gpu, cost_per_hour=cost_per_hour, slo=settings.slo,
                      cells=list(cells.values()), created_at=time.time(), source=engine_source or url)
