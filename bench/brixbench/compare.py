"""The side-by-side runner: one fleet per workload, every contender in turn on the same jobs and arrivals.

Between contenders the engines' prefix caches are emptied (``/reset_prefix_cache``) once they are idle, so
no contender inherits another's cache. A contender that cannot run here is listed with the reason instead
of stopping the comparison.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil
from brixmesh.engine_sim.tokenizer import SimTokenizer

from brixbench.arrivals import Arrivals
from brixbench.client import LoadClient, RunResult
from brixbench.contenders import resolve
from brixbench.contenders.base import Contender, ContenderError
from brixbench.contenders.brixmesh import MeshProvider
from brixbench.fleet import TOKENIZER_DIR, Fleet, FleetError, FleetSpec
from brixbench.kv_watch import EvictionCounter, unlimited_cache_hit_rate
from brixbench.stats import Slo
from brixbench.workloads import Job


@dataclass(frozen=True, slots=True)
class WorkloadCase:
    name: str
    jobs: list[Job]
    arrivals: Arrivals
    fleet: FleetSpec
    slo: Slo = field(default_factory=Slo)
    description: str = ""
    engine_metrics_on_bus: bool = False
    """Run the autoscaler next to brixmesh's router so ``least-kv-cache`` sees engine KV usage."""


@dataclass(slots=True)
class ContenderRun:
    contender: str
    workload: str
    status: Literal["ok", "skipped", "failed"]
    reason: str = ""
    result: RunResult | None = None
    router_cpu_s: float | None = None
    """CPU seconds of the router process (and its children) during the run; None: routes in the client."""
    helper_cpu_s: float | None = None
    """CPU seconds of helpers the contender needs besides its router (brixmesh's kv-index, autoscaler)."""
    wall_s: float = 0.0
    evicted_blocks: tuple[int, ...] = ()
    """Blocks each engine evicted during the run (its ``BlockRemoved`` events)."""
    hit_rate_bound: float = math.nan
    """Hit rate of one unlimited cache on this run's prompts (they include the engines' answers)."""


@dataclass(slots=True)
class CompareResult:
    cases: list[WorkloadCase]
    runs: list[ContenderRun] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def for_workload(self, name: str) -> list[ContenderRun]:
        return [run for run in self.runs if run.workload == name]


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return None


def _helpers_cpu_seconds(pids: list[int]) -> float | None:
    if not pids:
        return None
    seconds = [_cpu_seconds(pid) for pid in pids]
    return None if any(s is None for s in seconds) else sum(s for s in seconds if s is not None)


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else max(0.0, after - before)


Report = Callable[[str], None]


async def run_case(case: WorkloadCase, contenders: Sequence[str], workdir: Path, report: Report,
                   on_request_done: Callable[[], None] = lambda: None) -> list[ContenderRun]:
    runs: list[ContenderRun] = []
    fleet = Fleet(case.fleet, workdir / case.name)
    mesh = MeshProvider(scrape_metrics=case.engine_metrics_on_bus)
    if case.fleet.engine == "vllm":
        report(f"[{case.name}] starting {case.fleet.engines} vLLM CPU engines "
               f"({case.fleet.num_gpu_blocks} blocks)")
    else:
        report(f"[{case.name}] starting {case.fleet.engines} simulated {case.fleet.gpu} engines "
               f"(time scale {case.fleet.time_scale:g})")
    try:
        await fleet.start()
        for name in contenders:
            contender: Contender = resolve(name, mesh)
            reason = contender.unavailable()
            if reason is not None:
                report(f"[{case.name}] {name}: skipped ({reason})")
                runs.append(ContenderRun(name, case.name, "skipped", reason))
                continue
            runs.append(await _run_one(case, name, contender, fleet, mesh, workdir / case.name, report,
                                       on_request_done))
    finally:
        try:
            await mesh.stop()
        finally:
            await fleet.stop()  # real engines run in their own sessions: never leave them behind
    return runs


async def _run_one(case: WorkloadCase, name: str, contender: Contender, fleet: Fleet, mesh: MeshProvider,
                   workdir: Path, report: Report, on_request_done: Callable[[], None]) -> ContenderRun:
    await fleet.wait_idle()
    await fleet.reset()
    started = time.monotonic()
    try:
        target = await contender.start(fleet, workdir)
    except (ContenderError, FleetError, OSError) as exc:
        report(f"[{case.name}] {name}: failed to start ({exc})")
        await contender.stop()
        return ContenderRun(name, case.name, "failed", str(exc))
    try:
        helper_pids = mesh.mesh.helper_pids if mesh.mesh is not None and name.startswith("brixmesh:") else []
        cpu_before, helper_before = _cpu_seconds(contender.pid), _helpers_cpu_seconds(helper_pids)
        client = LoadClient(case.fleet.model, time_scale=case.fleet.time_scale)
        evictions = EvictionCounter(fleet.kv_endpoints)
        try:
            result = await client.run(case.jobs, case.arrivals, target, engine_urls=fleet.urls, slo=case.slo,
                                      on_request_done=on_request_done)
        finally:
            evicted = await evictions.close()
        cpu_after, helper_after = _cpu_seconds(contender.pid), _helpers_cpu_seconds(helper_pids)
    finally:
        await contender.stop()
    run = ContenderRun(name, case.name, "ok", result=result, router_cpu_s=_delta(cpu_before, cpu_after),
                       helper_cpu_s=_delta(helper_before, helper_after), wall_s=time.monotonic() - started,
                       evicted_blocks=tuple(evicted),
                       hit_rate_bound=_hit_rate_bound(result, case.fleet.block_size))
    s = result.summary
    failed = s.requests - s.succeeded
    if failed:
        first_error = next((r.error for r in result.records if not r.ok), "")
        run.reason = f"{failed} of {s.requests} requests failed, e.g. {first_error}"
    report(f"[{case.name}] {name}: {s.output_throughput:,.0f} out tok/s, TTFT p90 {s.ttft.p90 * 1000:,.0f} ms, "
           f"hit rate {_pct(result.engines.hit_rate)} (unlimited cache {_pct(run.hit_rate_bound)}), "
           f"busiest/mean {result.engines.busiest_over_mean:.2f}, evicted {sum(evicted)} blocks, "
           f"{s.succeeded}/{s.requests} ok, {run.wall_s:.0f}s wall")
    return run


def _hit_rate_bound(result: RunResult, block_size: int) -> float:
    tokenizer = SimTokenizer(TOKENIZER_DIR)
    sent = sorted((r for r in result.records if r.ok and r.prompt is not None), key=lambda r: r.sent_s)
    encode, encode_chat = tokenizer.encode, tokenizer.encode_chat
    requests = [(encode_chat(r.prompt) if isinstance(r.prompt, list) else encode(r.prompt),
                 encode(r.answer, add_special_tokens=False)) for r in sent]
    return unlimited_cache_hit_rate(requests, block_size)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.1f}%"


async def compare(cases: Sequence[WorkloadCase], contenders: Sequence[str], workdir: Path, report: Report,
                  on_request_done: Callable[[], None] = lambda: None) -> CompareResult:
    for name in contenders:  # fail on a typo before starting anything
        resolve(name, MeshProvider())
    main = asyncio.current_task()
    if main is not None:  # SIGTERM unwinds like Ctrl-C: engines and routers are stopped on the way out
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    result = CompareResult(list(cases))
    for case in cases:
        result.runs += await run_case(case, contenders, workdir, report, on_request_done)
    return result
