"""A small mesh for gpu-doctor tests: real nats-server, orchestrator with simulated engines on node
``node-a``, a router following its pods, and a gpu-doctor of ``node-a`` with the simulated and engine
sources (catalogue hold times shortened tenfold)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from brixmesh.common.bus import Bus
from brixmesh.common.messages import GPU_INDEX_LABEL, GpuDecision
from brixmesh.common.subjects import GPU_DECISIONS
from tests.orchestrator.orchestrator_proc import OrchestratorProcess, PodEventLog, run_orchestrator
from tests.service_proc import ADMIN_HEADERS, ServiceProcess, service_process

NODE = "node-a"
SLOW_SIM = ["--perf-model", "constant", "--time-to-first-token", "5", "--inter-token-latency", "40"]
DOCTOR_SETTINGS = {
    "BRIXMESH_NODE_NAME": NODE,
    "BRIXMESH_DOCTOR_SOURCES": "sim,engine",
    "BRIXMESH_POLL_INTERVAL_S": "0.25",
    "BRIXMESH_RESEND_INTERVAL_S": "1",
    "BRIXMESH_HOLD_SCALE": "0.1",
    "BRIXMESH_COOLDOWN_S": "60",
    "BRIXMESH_CANARY_INTERVAL_S": "0.5",
    "BRIXMESH_STEP_BASELINE_INTERVALS": "2",
}


class DecisionLog:
    def __init__(self) -> None:
        self.decisions: list[GpuDecision] = []

    def on_decision(self, _subject: str, decision: GpuDecision) -> None:
        self.decisions.append(decision)

    def first(self, *, resent: bool = False) -> list[GpuDecision]:
        return [d for d in self.decisions if d.resent == resent]

    async def wait_for(self, timeout_s: float = 30.0, **fields: object) -> GpuDecision:
        deadline = time.monotonic() + timeout_s
        while True:
            for decision in self.first():
                if all(getattr(decision, name) == value for name, value in fields.items()):
                    return decision
            if time.monotonic() > deadline:
                seen = [(d.signal, d.action, d.pods, d.reason) for d in self.first()]
                raise AssertionError(f"no decision with {fields} in {timeout_s}s; seen {seen}")
            await asyncio.sleep(0.05)


@dataclass
class Mesh:
    bus: Bus
    orchestrator: OrchestratorProcess
    router: ServiceProcess
    doctor: ServiceProcess
    events: PodEventLog
    decisions: DecisionLog
    http: httpx.AsyncClient

    async def deploy(self, replicas: int) -> list[str]:
        spec = {"model": "tiny-llama", "engine": "sim", "replicas": replicas, "engine_args": SLOW_SIM,
                "drain_grace_s": 30}
        response = await self.orchestrator.http.put("/v1/deployments/chat", json=spec)
        assert response.status_code == 201, response.text
        ready = await self.events.wait_for("ready", count=replicas, timeout=60)
        return [event.pod.pod for event in ready]

    def gpu_of(self, pod: str) -> str:
        return next(e.pod.labels[GPU_INDEX_LABEL] for e in self.events.events if e.pod.pod == pod)

    def endpoint_of(self, pod: str) -> str:
        return next(e.pod.endpoint for e in self.events.events if e.pod.pod == pod)

    async def inject(self, *faults: dict[str, object]) -> None:
        url = f"{self.doctor.url}/admin/faults"
        response = await self.http.post(url, json=list(faults), headers=ADMIN_HEADERS)
        assert response.status_code == 201, response.text

    async def engine_fault(self, pod: str, **faults: object) -> None:
        response = await self.http.post(f"{self.endpoint_of(pod)}/admin/faults", json=faults)
        assert response.status_code == 200, response.text

    async def complete(self, max_tokens: int = 4) -> httpx.Response:
        body = {"model": "tiny-llama", "prompt": "hello there", "max_tokens": max_tokens}
        return await self.http.post(f"{self.router.url}/v1/completions", json=body)

    async def wait_routed_to(self, pods: set[str], timeout_s: float = 30.0) -> None:
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while not pods <= seen:
            response = await self.complete(max_tokens=1)
            if response.status_code == 200:
                seen.add(response.headers["x-brixmesh-pod"])
            assert time.monotonic() < deadline, f"router reached {seen}, not all of {pods}"


@contextlib.asynccontextmanager
async def run_mesh(nats_url: str, work_dir: Path, gpus: int = 4) -> AsyncIterator[Mesh]:
    bus = await Bus.connect(nats_url, name="gpu-doctor-test")
    decisions = DecisionLog()
    await bus.subscribe(GPU_DECISIONS.pattern(), GpuDecision, decisions.on_decision)
    events = await PodEventLog.start(bus)
    orchestrator_env = {"BRIXMESH_NODE_NAME": NODE, "BRIXMESH_LOCAL_GPUS": str(gpus)}
    try:
        async with (
            run_orchestrator(nats_url, work_dir, orchestrator_env) as orchestrator,
            service_process("brixmesh.router", nats_url, work_dir / "router.log",
                            {"BRIXMESH_HOST": "127.0.0.1"}, stop_grace_s=15.0) as router,
            service_process("brixmesh.gpu_doctor", nats_url, work_dir / "doctor.log",
                            DOCTOR_SETTINGS) as doctor,
            httpx.AsyncClient(timeout=30) as http,
        ):  # fmt: skip
            yield Mesh(bus, orchestrator, router, doctor, events, decisions, http)
    finally:
        await bus.close()
