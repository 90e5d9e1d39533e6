"""The closed scale loop across restarts: real nats-server, orchestrator and autoscaler processes, simulated
engines. The test plays the router: it publishes ``router.stats`` with the in-flight count it wants the
autoscaler to see, so every decision is predictable.

- a decision published while the orchestrator is down is lost; the restarted orchestrator's status shows it
  was not taken, and the autoscaler sends it again within one evaluation;
- a restarted orchestrator keeps the scale (durable state) and adopts the engines;
- a person's replica change is overwritten by the autoscaler, which owns the deployment (and the PATCH
  answer says so);
- a restarted autoscaler keeps the observed desired replicas and decides nothing until its window refilled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import yaml
from brixmesh.common.bus import Bus
from brixmesh.common.messages import DeploymentStatus, PodEvent, RouterStats, ScaleDecision
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import DEPLOYMENTS_STATUS, PODS, ROUTER_STATS, SCALE_DECISIONS

from tests.autoscaler.autoscaler_proc import autoscaler_process
from tests.orchestrator.orchestrator_proc import run_orchestrator
from tests.waiting import eventually

MODEL = "tiny-llama"
EVALUATE_INTERVAL_S = 0.5
STABLE_WINDOW_S = 4.0
KEEP_ENGINES = {"BRIXMESH_STOP_PODS_ON_EXIT": "0"}


class Observer:
    """What the test sees on the bus: decisions, deployment statuses and pod events, with arrival times."""

    def __init__(self) -> None:
        self.decisions: list[tuple[float, ScaleDecision]] = []
        self.statuses: list[tuple[float, DeploymentStatus]] = []
        self.removed: list[PodEvent] = []

    async def attach(self, bus: Bus) -> None:
        decisions, statuses = self.decisions, self.statuses
        await bus.subscribe(
            SCALE_DECISIONS.pattern(), ScaleDecision, lambda _s, d: decisions.append((time.time(), d))
        )
        await bus.subscribe(
            DEPLOYMENTS_STATUS.pattern(), DeploymentStatus, lambda _s, s: statuses.append((time.time(), s))
        )
        await bus.subscribe(PODS.pattern(kind="removed"), PodEvent, lambda _s, e: self.removed.append(e))

    def new_decisions(self, since: float = 0.0) -> list[ScaleDecision]:
        return [d for at, d in self.decisions if at >= since and not d.resent]

    def status_from(self, orchestrator_since: float) -> list[tuple[float, DeploymentStatus]]:
        return [(at, s) for at, s in self.statuses if at >= orchestrator_since]


@contextlib.asynccontextmanager
async def router_stats(bus: Bus, load: dict[str, int]) -> AsyncIterator[None]:
    """Publishes ``load['in_flight']`` as one router's in-flight count, four times a second."""

    async def publish() -> None:
        while True:
            stats = RouterStats(router="test", model=MODEL, ts=time.time(), window_s=1.0, arrivals=0,
                                completions=0, failures=0, in_flight=load["in_flight"], queued=0,
                                prompt_tokens=0, completion_tokens=0)  # fmt: skip
            await bus.publish(ROUTER_STATS.format(model=MODEL, router="test"), stats)
            await asyncio.sleep(0.25)

    task = asyncio.create_task(publish())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ready_pids(http: httpx.AsyncClient) -> dict[str, int]:
    return {p["pod"]["pod"]: p["pid"] for p in (await http.get("/v1/pods")).json()["data"] if p["ready"]}


async def test_decisions_survive_lost_messages_restarts_and_manual_changes(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    nats_url = fresh_nats_server.url
    spec_file = tmp_path / "autoscalers.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "chat", "deployment": "chat", "model": MODEL, "strategy": "apa", "min_replicas": 1,
        "max_replicas": 3, "metrics": [{"source": "router", "metric": "in_flight", "target": 1}],
        "stable_window_s": STABLE_WINDOW_S, "panic_window_s": 1, "scale_down_cooldown_s": 0,
    }))  # fmt: skip
    autoscaler_settings = {"evaluate_interval_s": str(EVALUATE_INTERVAL_S), "decision_refresh_s": "60"}
    bus = await Bus.connect(nats_url, name="closed-loop-test")
    seen = Observer()
    await seen.attach(bus)
    load = {"in_flight": 1}
    deployment = {"model": MODEL, "engine": "sim", "replicas": 1}
    try:
        async with contextlib.AsyncExitStack() as autoscaled:
            await autoscaled.enter_async_context(router_stats(bus, load))
            async with run_orchestrator(nats_url, tmp_path, env=KEEP_ENGINES) as orch:
                assert (await orch.http.put("/v1/deployments/chat", json=deployment)).status_code == 201
                await eventually(lambda: ready_pids(orch.http), 30)
                await autoscaled.enter_async_context(autoscaler_process(
                    nats_url, spec_file, tmp_path / "autoscaler.log", **autoscaler_settings
                ))  # fmt: skip
                await eventually(lambda: seen.statuses, 10)
                orch.process.kill()  # SIGKILL: the engine keeps serving, nobody takes decisions
                orch.process.wait()

            # A decision made now is lost: no orchestrator listens.
            load["in_flight"] = 2
            await eventually(lambda: seen.new_decisions(), 10)
            (lost,) = seen.new_decisions()
            assert (lost.current_replicas, lost.desired_replicas) == (1, 2)

            restarted_at = time.time()
            async with run_orchestrator(nats_url, tmp_path, env=KEEP_ENGINES) as orch:
                # Its first status shows the decision was not taken; the autoscaler re-sends it at once.
                await eventually(lambda: seen.status_from(restarted_at), 10)
                first_at, first = seen.status_from(restarted_at)[0]
                assert (first.desired_replicas, first.last_decision_ts) == (1, 0.0)
                def scaled() -> list[float]:
                    return [at for at, s in seen.status_from(first_at) if s.desired_replicas == 2]

                await eventually(scaled, 10)
                # one evaluation, plus slack for a loaded machine
                late_s = scaled()[0] - first_at
                assert late_s <= EVALUATE_INTERVAL_S + 1.5, f"corrected {late_s:.2f}s after the first status"
                resent = [d for _, d in seen.decisions if d.resent]
                assert resent and resent[-1].desired_replicas == 2 and "not acknowledged" in resent[-1].reason

                async def two_ready() -> bool:
                    return len(await ready_pids(orch.http)) == 2

                await eventually(two_ready, 30)
                pids = await ready_pids(orch.http)

                # A person scales by hand: accepted, flagged, and overwritten by the autoscaler.
                patched_at = time.time()
                manual = await orch.http.patch("/v1/deployments/chat", json={"replicas": 3})
                assert manual.status_code == 200
                view = manual.json()
                assert view["replicas"] == 3 and view["autoscaled"] and "owns its replicas" in view["warning"]
                await eventually(lambda: [d for _, d in seen.decisions if "changed to 3" in d.reason], 10)
                overwrite = next(d for _, d in seen.decisions if "changed to 3" in d.reason)
                assert overwrite.resent and overwrite.desired_replicas == 2
                await eventually(lambda: seen.status_from(patched_at)[-1][1].desired_replicas == 2, 10)

            # A graceful restart keeps the scale and the engines (same pids); the autoscaler stays quiet.
            decided_before = len(seen.new_decisions())
            restarted_at = time.time()
            async with run_orchestrator(nats_url, tmp_path, env=KEEP_ENGINES) as orch:
                await eventually(lambda: seen.status_from(restarted_at), 10)
                assert seen.status_from(restarted_at)[0][1].desired_replicas == 2
                await eventually(lambda: all_ready(orch.http, pids), 30)
                assert len(seen.new_decisions()) == decided_before
                assert {e.pod.pod for e in seen.removed}.isdisjoint(pids)

        # The autoscaler restarts with the load gone: it keeps the observed 2 replicas until its stable
        # window has refilled, then scales down.
        load["in_flight"] = 0
        async with run_orchestrator(nats_url, tmp_path) as orch:  # stops the engines when the test ends
            await eventually(lambda: all_ready(orch.http, pids), 30)
            launched_at = time.time()
            async with router_stats(bus, load), autoscaler_process(
                nats_url, spec_file, tmp_path / "autoscaler-2.log", **autoscaler_settings
            ) as autoscaler_url:
                async with httpx.AsyncClient(base_url=autoscaler_url) as autoscaler:

                    async def follows_the_orchestrator() -> bool:
                        status = (await autoscaler.get("/v1/autoscalers/chat")).json()["status"]
                        return status["current_replicas"] == 2 and status["decisions"] == 0

                    await eventually(follows_the_orchestrator, 10)
                await eventually(lambda: seen.new_decisions(launched_at), STABLE_WINDOW_S + 10)
                (down,) = seen.new_decisions(launched_at)
                assert (down.current_replicas, down.desired_replicas) == (2, 1)
                assert down.ts - launched_at >= STABLE_WINDOW_S  # not from a window still refilling
    finally:
        await bus.close()


async def all_ready(http: httpx.AsyncClient, pids: dict[str, int]) -> bool:
    return await ready_pids(http) == pids
