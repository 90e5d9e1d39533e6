"""Autoscaler reaction benchmark: hpa, kpa and apa side by side on a load step and a sinusoid.

The autoscaler's real parts run in this process: the scraper (HTTP ``/metrics`` of simulated engines every
250 ms), the fleet view, the observation and the policy (evaluated every 500 ms). Around them, this script
plays the rest of the mesh:

- engines: one ``brixmesh-engine-sim --replicas N`` process (constant timing: 20 ms TTFT, 20 ms/token,
  4 sequences per engine), so one replica serves about 6 requests/s;
- orchestrator: applies each decision; a new pod turns ready ``--startup`` seconds later; scale-down drains
  (no new requests, pod removed when its last request finished);
- router: sends each request to the ready pod with the fewest in-flight requests and publishes its
  request statistics every second (the leading signal).

Windows are compressed (stable 24 s, panic 3 s, scale-down cooldown 10 s instead of 180 s / 60 s / 300 s)
so a run takes minutes; every strategy gets the same spec apart from ``strategy``.

Usage: ``.venv/bin/python bench/autoscale_reaction.py [--quick]``. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from brixbench.simulator import simulator
from brixmesh.autoscaler.fleet import Fleet, RouterSignals
from brixmesh.autoscaler.observe import observe
from brixmesh.autoscaler.policy import AutoscalerPolicy
from brixmesh.autoscaler.scraper import Scraper
from brixmesh.autoscaler.spec import parse_spec
from brixmesh.common.messages import PodEvent, PodInfo, RouterStats, ScaleDecision

MODEL = "tiny-llama"
MAX_TOKENS = 30
SLO_S = 1.5
"""A request meets the SLO when it completes within 1.5 s (unloaded: about 0.62 s)."""


def spec_for(strategy: str, max_replicas: int) -> dict:
    return {
        "name": f"bench-{strategy}", "deployment": "bench", "model": MODEL, "strategy": strategy,
        "min_replicas": 1, "max_replicas": max_replicas,
        "metrics": [{"source": "pod", "metric": "demand", "target": 3},
                    {"source": "router", "metric": "demand", "target": 3}],
        "stable_window_s": 24, "panic_window_s": 3, "scale_down_cooldown_s": 10,
    }  # fmt: skip


def engine_args(replicas: int) -> list[str]:
    return [
        "--replicas", str(replicas), "--perf-model", "constant", "--time-to-first-token", "20",
        "--inter-token-latency", "20", "--max-num-seqs", "4", "--max-model-len", "1024", "--block-size", "16",
        "--num-gpu-blocks-override", "512",
    ]  # fmt: skip


@dataclass
class Pod:
    info: PodInfo
    state: str = "added"
    ready_at: float = 0.0
    in_flight: int = 0


@dataclass
class BenchFleet:
    """The orchestrator and router stand-ins: pods from a pool of engine URLs, least-request routing."""

    urls: list[str]
    startup_s: float
    fleet: Fleet
    pods: dict[str, Pod] = field(default_factory=dict)
    ready_history: list[tuple[float, int]] = field(default_factory=list)

    def _event(self, kind: str, pod: Pod) -> None:
        pod.state = kind
        self.fleet.apply(PodEvent(kind=kind, pod=pod.info, ts=time.time()))  # type: ignore[arg-type]

    def start(self, n: int, now: float, ready_now: bool = False) -> None:
        free = [u for u in self.urls if all(p.info.endpoint != u for p in self.pods.values())]
        for url in free[:n]:
            name = f"bench-{self.urls.index(url)}"
            info = PodInfo(
                pod=name,
                deployment="bench",
                model=MODEL,
                engine="sim",
                endpoint=url,
                metrics_url=f"{url}/metrics",
            )
            pod = self.pods[name] = Pod(info=info, ready_at=now if ready_now else now + self.startup_s)
            self._event("added", pod)

    def apply(self, decision: ScaleDecision, now: float) -> None:
        live = [p for p in self.pods.values() if p.state in ("added", "ready")]
        if decision.desired_replicas > len(live):
            self.start(decision.desired_replicas - len(live), now)
        for pod in sorted(live, key=lambda p: p.ready_at, reverse=True)[
            : max(0, len(live) - decision.desired_replicas)
        ]:
            self._event("draining", pod)

    def tick(self, now: float) -> None:
        for name, pod in list(self.pods.items()):
            if pod.state == "added" and now >= pod.ready_at:
                self._event("ready", pod)
            elif pod.state == "draining" and pod.in_flight == 0:
                self._event("removed", pod)
                del self.pods[name]
        ready = sum(1 for p in self.pods.values() if p.state == "ready")
        if not self.ready_history or self.ready_history[-1][1] != ready:
            self.ready_history.append((now, ready))

    def pick(self) -> Pod | None:
        ready = [p for p in self.pods.values() if p.state == "ready"]
        return min(ready, key=lambda p: (p.in_flight, random.random())) if ready else None


@dataclass
class RunResult:
    strategy: str
    trace: str
    first_decision_s: float
    converge_s: float
    decisions: int
    requests: int
    slo_attainment: float
    failures: int
    replica_seconds: float
    latency_p50_s: float
    latency_p90_s: float


def step_rate(light: float, heavy: float, step_at: float) -> Callable[[float], float]:
    return lambda t: light if t < step_at else heavy


def sinusoid_rate(low: float, high: float, period: float) -> Callable[[float], float]:
    mid, amp = (low + high) / 2, (high - low) / 2
    return lambda t: mid - amp * math.cos(2 * math.pi * t / period)


async def run_one(urls: list[str], strategy: str, trace: str, rate_at: Callable[[float], float], duration: float,
                  event_at: float, startup_s: float, seed: int, verbose: bool = False) -> RunResult:  # fmt: skip
    rng = random.Random(seed)
    fleet, routers = Fleet(), RouterSignals()
    bench = BenchFleet(urls=urls, startup_s=startup_s, fleet=fleet)
    policy = AutoscalerPolicy(parse_spec(spec_for(strategy, len(urls))))
    latencies: list[float] = []
    failures = 0
    decisions: list[tuple[float, ScaleDecision]] = []
    arrivals = queued = 0
    t0 = time.time()
    bench.start(1, t0, ready_now=True)
    bench.tick(t0)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=512)) as client:
        scraper = Scraper(client, timeout_s=0.2)

        async def request() -> None:
            nonlocal failures, queued
            started = time.time()
            pod = bench.pick()
            while pod is None:  # no ready pod: the router holds the request
                queued += 1
                await asyncio.sleep(0.05)
                queued -= 1
                pod = bench.pick()
            pod.in_flight += 1
            try:
                body = {"model": MODEL, "prompt": "benchmark the autoscaler", "max_tokens": MAX_TOKENS}
                response = await client.post(f"{pod.info.endpoint}/v1/completions", json=body)
                if response.status_code != 200:
                    failures += 1
                else:
                    latencies.append(time.time() - started)
            except httpx.HTTPError:
                failures += 1
            finally:
                pod.in_flight -= 1

        async def load() -> None:
            nonlocal arrivals
            tasks = []
            t = 0.0
            while t < duration:
                t += rng.expovariate(max(rate_at(t), 1e-6))
                delay = t0 + t - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                arrivals += 1
                tasks.append(asyncio.create_task(request()))
            await asyncio.gather(*tasks)

        async def control() -> None:
            nonlocal arrivals
            next_scrape = next_eval = next_stats = time.time()
            while True:
                now = time.time()
                bench.tick(now)
                if now >= next_scrape:
                    next_scrape += 0.25
                    for metrics in await scraper.scrape_all(fleet.scrape_targets()):
                        fleet.record(metrics)
                if now >= next_stats:
                    next_stats += 1.0
                    in_flight = sum(p.in_flight for p in bench.pods.values())
                    routers.record(RouterStats(router="bench", model=MODEL, ts=now, window_s=1.0, arrivals=arrivals,
                                               completions=0, failures=0, in_flight=in_flight, queued=queued,
                                               prompt_tokens=0, completion_tokens=0))  # fmt: skip
                    arrivals = 0
                if now >= next_eval:
                    next_eval += 0.5
                    decision = policy.evaluate(
                        observe(policy.spec, fleet, routers, now, max_metrics_age_s=2.0)
                    )
                    if decision is not None:
                        decisions.append((now - t0, decision))
                        if verbose:
                            print(
                                f"  {now - t0:6.2f}s {decision.reason} [{decision.window_state}]",
                                file=sys.stderr,
                            )
                        bench.apply(decision, now)
                await asyncio.sleep(0.05)

        controller = asyncio.create_task(control())
        await load()
        controller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await controller

    ups = [at for at, d in decisions if d.desired_replicas > d.current_replicas and at >= event_at]
    first = ups[0] - event_at if ups else math.nan
    history = [(t - t0, n) for t, n in bench.ready_history]
    converge = math.nan
    if ups:
        if trace == "step":  # settling time: the ready count's last change under the heavy load
            changes = [t for t, _ in history if t >= event_at]
            converge = changes[-1] - event_at if changes else math.nan
        else:  # time until the ready count first reaches its peak of the first period
            peak = max(n for t, n in history if t <= duration)
            converge = next(t for t, n in history if n == peak) - event_at
    replica_seconds = 0.0
    for (t, n), (t_next, _) in zip(history, [*history[1:], (duration, 0)]):
        replica_seconds += n * max(0.0, min(t_next, duration) - t)
    met = sum(1 for latency in latencies if latency <= SLO_S)
    total = len(latencies) + failures
    ordered = sorted(latencies) or [math.nan]
    p50, p90 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return RunResult(strategy, trace, first, converge, len(decisions), total, met / total if total else math.nan,
                     failures, replica_seconds, p50, p90)  # fmt: skip


async def warm_up(urls: list[str], seconds: float = 5.0) -> None:
    """Load every engine briefly so the first strategy does not pay for cold connections and caches."""
    body = {"model": MODEL, "prompt": "benchmark the autoscaler", "max_tokens": MAX_TOKENS}
    async with httpx.AsyncClient(timeout=60) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.gather(*(client.post(f"{url}/v1/completions", json=body) for url in urls))


def print_table(results: list[RunResult]) -> None:
    print(f"SLO: request done within {SLO_S:g} s; windows stable 24 s / panic 3 s; scale-down cooldown 10 s")
    print(
        "1st decision: first scale-up after the step (step) or the start (sinusoid); converge: step = last change"
    )
    print("of the ready count after the step, sinusoid = time until the ready count first reaches its peak\n")
    header = f"{'trace':<9}{'strategy':<9}{'1st decision':>13}{'converge':>10}{'decisions':>10}{'requests':>9}" \
             f"{'SLO met':>9}{'p50':>7}{'p90':>7}{'failed':>7}{'replica-s':>10}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.trace:<9}{r.strategy:<9}{r.first_decision_s:>12.2f}s{r.converge_s:>9.1f}s{r.decisions:>10}"
              f"{r.requests:>9}{r.slo_attainment:>9.1%}{r.latency_p50_s:>6.2f}s{r.latency_p90_s:>6.2f}s{r.failures:>7}{r.replica_seconds:>10.0f}")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter traces (smoke run)")
    parser.add_argument("--replicas", type=int, default=6, help="engine pool = max replicas")
    parser.add_argument("--startup", type=float, default=1.0, help="s from scale-up decision to a ready pod")
    parser.add_argument("--strategies", default="hpa,kpa,apa")
    parser.add_argument("--verbose", action="store_true", help="print every decision's reason")
    args = parser.parse_args()
    step_at, step_len = (5.0, 20.0) if args.quick else (10.0, 40.0)
    period = 30.0 if args.quick else 60.0
    light, heavy = 2.0, 20.0
    results = []
    with simulator(engine_args(args.replicas), model=MODEL, healthy_within_s=20) as (_, urls):
        await warm_up(urls)
        for strategy in args.strategies.split(","):
            for trace in ("step", "sinusoid"):
                if trace == "step":
                    rate, duration, event_at = step_rate(light, heavy, step_at), step_at + step_len, step_at
                else:
                    rate, duration, event_at = sinusoid_rate(light, heavy, period), period, 0.0
                result = await run_one(
                    urls,
                    strategy,
                    trace,
                    rate,
                    duration,
                    event_at,
                    args.startup,
                    seed=7,
                    verbose=args.verbose,
                )
                print(f"{trace:<9}{strategy:<5} done: {result.decisions} decisions, SLO {result.slo_attainment:.1%}",
                      file=sys.stderr, flush=True)  # fmt: skip
                results.append(result)
                await asyncio.sleep(2.0)  # let the engines drain before the next run
    results.sort(key=lambda r: (r.trace != "step", r.strategy))
    print(f"load: {light:g} -> {heavy:g} req/s ({MAX_TOKENS} output tokens each, about 6 req/s per replica), "
          f"pod startup {args.startup:g} s, {args.replicas} replicas max")  # fmt: skip
    print_table(results)


if __name__ == "__main__":
    asyncio.run(main())
