"""Real NATS, real simulated engines, the autoscaler service as a process: the test plays the orchestrator
(publishes ``pods.ready``) and a client; it checks scrape -> ``metrics.pods`` -> ``scale.decisions``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import yaml
from brixmesh.common.bus import Bus
from brixmesh.common.messages import (
    PodEvent,
    PodInfo,
    PodList,
    PodListRequest,
    PodMetrics,
    PodStatus,
    RouterStats,
    ScaleDecision,
)  # fmt: skip
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import METRICS_PODS, PODS, PODS_LIST, ROUTER_STATS, SCALE_DECISIONS

from tests.autoscaler.autoscaler_proc import autoscaler_process
from tests.engine_sim.sim_engine import sim_engine

MODEL = "tiny-llama"


def _pod(name: str, url: str, deployment: str = "chat") -> PodInfo:
    return PodInfo(
        pod=name, deployment=deployment, model=MODEL, engine="sim", endpoint=url, metrics_url=f"{url}/metrics"
    )


async def _publish(bus: Bus, kind: str, pod: PodInfo) -> None:
    await bus.publish(
        PODS.format(kind=kind, deployment=pod.deployment, pod=pod.pod),
        PodEvent(kind=kind, pod=pod, ts=time.time()),
    )  # type: ignore[arg-type]


async def _collect(bus: Bus, pattern: str, schema: type, into: list) -> None:
    await bus.subscribe(pattern, schema, lambda _s, m: into.append((time.time(), m)))


async def test_scrape_publishes_metrics_and_load_produces_a_decision(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    spec = {
        "name": "chat", "deployment": "chat", "strategy": "kpa", "max_replicas": 4,
        "metrics": [{"source": "pod", "metric": "demand", "target": 4}],
        "stable_window_s": 20, "panic_window_s": 2,
    }  # fmt: skip
    spec_file = tmp_path / "autoscalers.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    metrics: list[tuple[float, PodMetrics]] = []
    decisions: list[tuple[float, ScaleDecision]] = []
    await _collect(bus, METRICS_PODS.pattern(), PodMetrics, metrics)
    await _collect(bus, SCALE_DECISIONS.pattern(), ScaleDecision, decisions)
    extra = ["--max-num-seqs", "4", "--inter-token-latency", "20", "--metrics-flavor", "sglang"]
    with sim_engine(extra, kv_events=False) as engine:
        pod = _pod("chat-0", engine.base_url)
        # chat-0 is known from the orchestrator's pods.list answer at start, ghost-0 from a pods.ready event
        listing = PodList(
            pods=[PodStatus(pod=pod, phase="ready", ready=True, created_at=0, phase_since=0)], ts=time.time()
        )
        await bus.serve(PODS_LIST.template, PodListRequest, lambda _s, _r: listing)
        async with autoscaler_process(nats_server.url, spec_file, tmp_path / "as.log") as url:
            await _check_scrape_and_decision(bus, engine.base_url, url, metrics, decisions)


async def _check_scrape_and_decision(
    bus: Bus, engine_url: str, url: str, metrics: list, decisions: list
) -> None:
    ghost = _pod("ghost-0", "http://127.0.0.1:9", deployment="ghost")  # nothing listens on port 9
    await _publish(bus, "ready", ghost)
    await asyncio.sleep(1.5)
    fresh = [m for _, m in metrics if m.pod == "chat-0"]
    assert fresh and not any(m.stale for m in fresh) and fresh[-1].engine_flavor == "sglang"
    stale = [m for _, m in metrics if m.pod == "ghost-0"]
    assert stale and all(m.stale for m in stale)
    assert decisions == []  # idle, one pod: nothing to change

    async with httpx.AsyncClient(timeout=30) as client:
        body = {"model": MODEL, "prompt": "hello there", "max_tokens": 150}
        step_at = time.time()
        load = [
            asyncio.create_task(client.post(f"{engine_url}/v1/completions", json=body)) for _ in range(16)
        ]
        deadline = time.time() + 10
        while not decisions and time.time() < deadline:
            await asyncio.sleep(0.1)
        assert decisions, "no scale decision under load"
        first_at, first = decisions[0]
        assert first.deployment == "chat" and first.algorithm == "kpa"
        assert first.current_replicas == 1 and first.desired_replicas == 2
        assert first.metrics["pod:demand"] >= 8 and "panic" in first.window_state
        assert first_at - step_at < 5.0  # generous for a loaded CI box; the e2e acceptance checks 2 s
        responses = await asyncio.gather(*load)
        assert all(r.status_code == 200 for r in responses)
    async with httpx.AsyncClient() as client:
        status = (await client.get(f"{url}/v1/autoscalers/chat")).json()["status"]
    assert (
        status["decisions"] == len(decisions)
        and status["current_replicas"] == decisions[-1][1].desired_replicas
    )
    await _publish(bus, "removed", ghost)


async def test_scale_from_zero_on_router_stats(nats_server: NatsServer, bus: Bus, tmp_path: Path) -> None:
    spec = {"name": "cold", "deployment": "cold", "model": "cold-model", "min_replicas": 0, "scale_to_zero": True,
            "metrics": [{"source": "router", "metric": "demand", "target": 4}]}  # fmt: skip
    spec_file = tmp_path / "autoscalers.yaml"
    spec_file.write_text(yaml.safe_dump({"autoscalers": [spec]}))
    decisions: list[tuple[float, ScaleDecision]] = []
    await _collect(bus, SCALE_DECISIONS.pattern(deployment="cold"), ScaleDecision, decisions)
    async with autoscaler_process(nats_server.url, spec_file, tmp_path / "as.log"):
        await asyncio.sleep(1.0)
        assert decisions == []
        stats = RouterStats(router="r1", model="cold-model", ts=time.time(), window_s=1.0, arrivals=2, completions=0,
                            failures=0, in_flight=0, queued=2, prompt_tokens=0, completion_tokens=0)  # fmt: skip
        sent_at = time.time()
        await bus.publish(ROUTER_STATS.format(model="cold-model", router="r1"), stats)
        deadline = time.time() + 5
        while not decisions and time.time() < deadline:
            await asyncio.sleep(0.05)
        assert decisions, "no scale-from-zero decision"
        at, decision = decisions[0]
        assert (decision.current_replicas, decision.desired_replicas) == (0, 1)
        assert "scale from zero" in decision.reason and at - sent_at < 2.0
