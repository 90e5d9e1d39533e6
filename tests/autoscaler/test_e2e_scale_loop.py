"""Acceptance of the closed scale loop: orchestrator + autoscaler + simulated engines on a real NATS server.

The test plays the clients and the router: it spreads requests over the ready pods it learns from
``pods.*`` (least in-flight first) and stops sending to a pod once it is draining.

Time is compressed so the test takes about a minute: stable window 12 s, panic window 2 s, scale-down
cooldown 4 s (AIBrix: 180 s, 60 s, 300 s), and the no-flapping check counts decisions over 10 s of steady
load instead of 5 minutes (with a 12 s stable window, 10 s of steady load already spans most of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path

import httpx
import yaml
from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, RouterStats, ScaleDecision
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS, ROUTER_STATS, SCALE_DECISIONS

from tests.autoscaler.autoscaler_proc import autoscaler_process
from tests.orchestrator.orchestrator_proc import run_orchestrator

MODEL = "tiny-llama"
# 20 ms per token, 4 sequences per engine: a 40-token request takes about 0.8 s, an engine serves ~5 req/s
ENGINE_ARGS = ["--perf-model", "constant", "--time-to-first-token", "10", "--inter-token-latency", "20",
               "--max-num-seqs", "4"]  # fmt: skip


class TestRouter:
    """Ready pods from pod events; least in-flight routing; counts failures."""

    __test__ = False

    def __init__(self) -> None:
        self.ready: dict[str, str] = {}
        self.in_flight: dict[str, int] = {}
        self.served = 0
        self.failed: list[str] = []
        self.drained_busy = 0
        """Pods that started draining with requests of ours still in flight."""

    def on_event(self, _subject: str, event: PodEvent) -> None:
        if event.kind == "ready":
            self.ready[event.pod.pod] = event.pod.endpoint
            return
        if (
            event.kind == "draining"
            and event.pod.pod in self.ready
            and self.in_flight.get(event.pod.pod, 0) > 0
        ):
            self.drained_busy += 1
        self.ready.pop(event.pod.pod, None)

    async def send(self, client: httpx.AsyncClient, max_tokens: int = 40, hold_s: float = 30.0) -> None:
        deadline = time.monotonic() + hold_s
        while not self.ready:  # no ready pod: hold the request, as the router does
            if time.monotonic() > deadline:
                self.failed.append("no ready pod in time")
                return
            await asyncio.sleep(0.05)
        pod = min(self.ready, key=lambda p: (self.in_flight.get(p, 0), random.random()))
        url = self.ready[pod]
        self.in_flight[pod] = self.in_flight.get(pod, 0) + 1
        try:
            body = {"model": MODEL, "prompt": "scale me", "max_tokens": max_tokens}
            response = await client.post(f"{url}/v1/completions", json=body)
            if response.status_code == 200:
                self.served += 1
            else:
                self.failed.append(f"{pod}: HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            self.failed.append(f"{pod}: {type(exc).__name__}")
        finally:
            self.in_flight[pod] -= 1

    async def clients(self, n: int, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=60) as client:

            async def loop() -> None:
                while not stop.is_set():
                    await self.send(client)

            await asyncio.gather(*(loop() for _ in range(n)))


def _spec(**overrides: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "name": "chat", "deployment": "chat", "model": MODEL, "strategy": "kpa", "min_replicas": 1, "max_replicas": 3,
        "metrics": [{"source": "pod", "metric": "demand", "target": 3}],
        "stable_window_s": 12, "panic_window_s": 2, "scale_down_cooldown_s": 4,
    }  # fmt: skip
    spec.update(overrides)
    return spec


async def _wait(condition, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.time()


async def test_step_scales_up_fast_converges_without_flapping_and_drains_cleanly(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    bus = await Bus.connect(fresh_nats_server.url, name="e2e")
    router = TestRouter()
    decisions: list[tuple[float, ScaleDecision]] = []
    await bus.subscribe(PODS.pattern(), PodEvent, router.on_event)
    await bus.subscribe(  # new verdicts only: a decision in force re-sent is no change
        SCALE_DECISIONS.pattern(), ScaleDecision, lambda _s, d: d.resent or decisions.append((time.time(), d))
    )
    spec_file = tmp_path / "autoscalers.yaml"
    spec_file.write_text(yaml.safe_dump(_spec()))
    try:
        async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
            deployment = {
                "model": MODEL,
                "engine": "sim",
                "replicas": 1,
                "engine_args": ENGINE_ARGS,
                "drain_grace_s": 30,
            }
            assert (await orch.http.put("/v1/deployments/chat", json=deployment)).status_code == 201
            await _wait(lambda: len(router.ready) == 1, 30, "the first pod")
            async with autoscaler_process(fresh_nats_server.url, spec_file, tmp_path / "autoscaler.log"):
                # light load: one client keeps one request in flight; one pod is right
                light_stop, heavy_stop = asyncio.Event(), asyncio.Event()
                light = asyncio.create_task(router.clients(1, light_stop))
                await asyncio.sleep(4)
                assert decisions == [], [d.reason for _, d in decisions]

                # step: 11 more clients (demand ~12 against a target of 3 per pod -> 4, capped at max 3)
                step_at = time.time()
                heavy = asyncio.create_task(router.clients(11, heavy_stop))
                first_at = await _wait(lambda: bool(decisions), 10, "the first scale-up decision")
                first = decisions[0][1]
                assert first.desired_replicas > first.current_replicas == 1
                assert first_at - step_at <= 2.0, f"first decision {first_at - step_at:.2f}s after the step"

                converged_at = await _wait(lambda: len(router.ready) == 3, 40, "3 ready pods")
                assert decisions[-1][1].desired_replicas == 3

                # steady load: no decision at all over the check window
                steady_from = time.time()
                await asyncio.sleep(10)
                steady = [d for at, d in decisions if at >= steady_from]
                assert steady == [], [d.reason for d in steady]

                # load drops to three clients (demand ~3: one pod's worth): scale down to 1 while every pod
                # has requests in flight, so the drained ones must finish them
                tail_stop = asyncio.Event()
                tail = asyncio.create_task(router.clients(2, tail_stop))
                heavy_stop.set()
                await heavy
                await _wait(lambda: len(router.ready) == 1, 60, "scale-down to 1 ready pod")
                downs = [d for _, d in decisions if d.desired_replicas < d.current_replicas]
                assert downs and downs[-1].desired_replicas == 1
                await asyncio.sleep(2)  # the drained pods' last requests complete (or would fail) meanwhile
                light_stop.set()
                tail_stop.set()
                await asyncio.gather(light, tail)
            assert router.failed == [], router.failed
            assert router.served > 50
            assert router.drained_busy >= 1, (
                "no pod was drained while serving: the drain check proved nothing"
            )
            print(f"first decision {first_at - step_at:.2f}s after the step; converged {converged_at - step_at:.1f}s; "
                  f"{len(decisions)} decisions; {router.served} requests served, none failed")  # fmt: skip
    finally:
        await bus.close()


async def test_scale_to_zero_then_a_held_request_is_served(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    bus = await Bus.connect(fresh_nats_server.url, name="e2e")
    router = TestRouter()
    decisions: list[ScaleDecision] = []
    await bus.subscribe(PODS.pattern(), PodEvent, router.on_event)
    await bus.subscribe(SCALE_DECISIONS.pattern(), ScaleDecision, lambda _s, d: decisions.append(d))
    spec_file = tmp_path / "autoscalers.yaml"
    spec = _spec(min_replicas=0, scale_to_zero=True, strategy="apa", stable_window_s=2, panic_window_s=1,
                 scale_down_cooldown_s=1)  # fmt: skip
    spec_file.write_text(yaml.safe_dump(spec))
    try:
        async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
            deployment = {"model": MODEL, "engine": "sim", "replicas": 1, "engine_args": ENGINE_ARGS}
            assert (await orch.http.put("/v1/deployments/chat", json=deployment)).status_code == 201
            await _wait(lambda: len(router.ready) == 1, 30, "the first pod")
            async with autoscaler_process(fresh_nats_server.url, spec_file, tmp_path / "autoscaler.log"):
                await _wait(lambda: any(d.desired_replicas == 0 for d in decisions), 20, "scale to zero")
                await _wait(lambda: not router.ready, 20, "no ready pod")
                # a request arrives: the router holds it and reports it queued until a pod is ready
                async with httpx.AsyncClient(timeout=60) as client:
                    held = asyncio.create_task(router.send(client, max_tokens=5, hold_s=45))
                    while not held.done():
                        stats = RouterStats(router="test", model=MODEL, ts=time.time(), window_s=1.0, arrivals=1,
                                            completions=0, failures=0, in_flight=0, queued=0 if router.ready else 1,
                                            prompt_tokens=0, completion_tokens=0)  # fmt: skip
                        await bus.publish(ROUTER_STATS.format(model=MODEL, router="test"), stats)
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(asyncio.shield(held), 1.0)
                assert router.failed == [] and router.served == 1
                assert any(d.current_replicas == 0 and d.desired_replicas >= 1 for d in decisions)
    finally:
        await bus.close()
