"""Role-set deployments end to end: a real nats-server, the orchestrator and router processes, simulated
prefill and decode engines. A rolling update of two role sets under load fails no request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from brixmesh.common.bus import Bus
from brixmesh.common.messages import DeploymentStatus, ScaleDecision
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import DEPLOYMENTS_STATUS, SCALE_DECISIONS
from tests.orchestrator.orchestrator_proc import PodEventLog, run_orchestrator
from tests.router.harness import router_process
from tests.waiting import eventually

FAST_SIM = ["--perf-model", "constant", "--time-to-first-token", "5", "--inter-token-latency", "15"]
NIXL = "NixlConnector"


def kv_config(role: str) -> str:
    return json.dumps({"kv_connector": NIXL, "kv_role": role})


def pd_deployment(
    replicas: int = 2, decode_args: tuple[str, ...] = (), **fields: object
) -> dict[str, object]:
    return {
        "model": "tiny-llama", "engine": "sim", "replicas": replicas, "engine_args": FAST_SIM,
        "drain_grace_s": 20,
        "roles": [
            {"name": "prefill", "engine_args": ["--kv-transfer-config", kv_config("kv_producer")]},
            {"name": "decode", "upgrade_order": 1,
             "engine_args": ["--kv-transfer-config", kv_config("kv_consumer"), *decode_args]},
        ],
        "update": {"max_surge": 1, "max_unavailable": 0, "role_order": "sequential"},
        **fields,
    }  # fmt: skip


@pytest.fixture
async def nats_bus(fresh_nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(fresh_nats_server.url, name="role-sets-test")
    yield bus
    await bus.close()


class StatusLog:
    def __init__(self) -> None:
        self.statuses: list[DeploymentStatus] = []

    @classmethod
    async def start(cls, bus: Bus, deployment: str) -> StatusLog:
        log = cls()
        await bus.subscribe(DEPLOYMENTS_STATUS.format(deployment=deployment), DeploymentStatus,
                            lambda _subject, status: log.statuses.append(status))  # fmt: skip
        return log

    @property
    def last(self) -> DeploymentStatus | None:
        return self.statuses[-1] if self.statuses else None


class Load:
    """Clients streaming completions through the router without pause; every failure is kept."""

    def __init__(self, base_url: str, clients: int) -> None:
        self.base_url = base_url
        self.completed = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(clients)]

    async def _client(self, number: int) -> None:
        body = {"model": "tiny-llama", "prompt": f"client {number} asks", "max_tokens": 12, "stream": True}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    async with http.stream("POST", "/v1/completions", json=body) as response:
                        text = (await response.aread()).decode()
                    if response.status_code != 200 or "data: [DONE]" not in text:
                        self.failures.append(f"{response.status_code}: {text[-300:]}")
                    else:
                        self.completed += 1
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_role_sets_start_whole_and_roll_without_failing_a_request(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    events = await PodEventLog.start(nats_bus)
    statuses = await StatusLog.start(nats_bus, "pd")
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        response = await orch.http.put("/v1/deployments/pd", json=pd_deployment())
        assert response.status_code == 201, response.text
        ready = await events.wait_for("ready", count=4, timeout=60)
        members = sorted((e.pod.role_set, e.pod.role, e.pod.replica_index, e.pod.kv_transfer) for e in ready)
        assert members == [
            ("pd-0", "decode", 0, "nixl"), ("pd-0", "prefill", 0, "nixl"),
            ("pd-1", "decode", 0, "nixl"), ("pd-1", "prefill", 0, "nixl"),
        ]  # fmt: skip
        assert {(e.pod.labels["role_set"], e.pod.labels["role_name"]) for e in ready} == {
            (m[0], m[1]) for m in members
        }
        # sequential: a role set's decode pod starts only once its prefill pod is ready
        for role_set in ("pd-0", "pd-1"):
            prefill_ready = next(
                e.ts for e in ready if e.pod.role_set == role_set and e.pod.role == "prefill"
            )
            decode_added = next(e.ts for e in events.matching("added") if e.pod.role_set == role_set
                                and e.pod.role == "decode")  # fmt: skip
            assert decode_added >= prefill_ready
        await eventually(lambda: statuses.last is not None and statuses.last.ready_replicas == 2, 10)
        status = statuses.last
        assert status is not None and (status.mode, status.desired_replicas) == ("replica", 2)
        assert [(s.name, s.ready, s.current, s.pods) for s in status.role_sets] == [
            ("pd-0", True, True, 2), ("pd-1", True, True, 2)
        ]  # fmt: skip
        old_pods = {e.pod.pod for e in ready}

        with router_process(fresh_nats_server.url, default_strategy="least-request") as router:
            load = Load(router.url, clients=3)
            await eventually(lambda: load.completed >= 10, 30, describe=lambda: str(load.failures[-3:]))
            rollout_from = len(statuses.statuses)
            new_roles = pd_deployment(decode_args=("--max-num-seqs", "64"))["roles"]
            patched = await orch.http.patch("/v1/deployments/pd", json={"roles": new_roles})
            assert patched.status_code == 200 and patched.json()["generation"] == 2, patched.text
            for pod in old_pods:
                await events.wait_for("removed", pod=pod, timeout=120)
            served_before = load.completed
            await eventually(lambda: load.completed >= served_before + 10, 30)
            await load.stop()
        assert load.failures == [], load.failures[:5]

        # a serving role set at every moment: never fewer than 2 ready (max_unavailable 0)
        during = statuses.statuses[rollout_from:]
        assert min(s.ready_replicas for s in during) == 2
        assert max(len(s.role_sets) for s in during) == 3  # max_surge 1
        final = (await orch.http.get("/v1/deployments/pd")).json()
        assert final["status"]["ready"] == 4 and final["status"]["updated"] == 4
        new_sets = {e.pod.role_set for e in events.matching("ready") if e.pod.pod not in old_pods}
        assert len(new_sets) == 2


async def test_a_failed_pod_is_replaced_within_its_role_set(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    events = await PodEventLog.start(nats_bus)
    statuses = await StatusLog.start(nats_bus, "pd")
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        spec = pd_deployment(replicas=2, restart_policy="never", update={"role_order": "parallel"})
        assert (await orch.http.put("/v1/deployments/pd", json=spec)).status_code == 201
        await events.wait_for("ready", count=4, timeout=60)
        await eventually(lambda: statuses.last is not None and statuses.last.ready_replicas == 2, 10)
        pods = (await orch.http.get("/v1/pods", params={"deployment": "pd"})).json()["data"]
        victim = next(p for p in pods if p["pod"]["role_set"] == "pd-1" and p["pod"]["role"] == "decode")
        os.kill(victim["pid"], signal.SIGKILL)

        await events.wait_for("removed", pod=victim["pod"]["pod"])
        # the role set is not ready while a role is missing
        await eventually(lambda: statuses.last is not None and statuses.last.ready_replicas == 1, 10)
        assert [s.ready for s in statuses.last.role_sets] == [True, False]  # type: ignore[union-attr]
        (replacement,) = await events.wait_for(
            "ready", where=lambda e: e.pod.role_set == "pd-1" and e.pod.role == "decode"
            and e.pod.pod != victim["pod"]["pod"], timeout=60,
        )  # fmt: skip
        assert (replacement.pod.role_set, replacement.pod.replica_index) == ("pd-1", 0)
        await eventually(lambda: statuses.last is not None and statuses.last.ready_replicas == 2, 10)


async def test_pool_mode_decisions_scale_the_targeted_role_only(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    events = await PodEventLog.start(nats_bus)
    statuses = await StatusLog.start(nats_bus, "pd")
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        spec = pd_deployment(replicas=1, mode="pool", update={"role_order": "parallel"})
        assert (await orch.http.put("/v1/deployments/pd", json=spec)).status_code == 201
        await events.wait_for("ready", count=2, timeout=60)

        decided_at = time.time()
        await nats_bus.publish(SCALE_DECISIONS.format(deployment="pd"), ScaleDecision(
            deployment="pd", role="decode", current_replicas=1, desired_replicas=2, algorithm="test",
            reason="kv usage", ts=decided_at,
        ))  # fmt: skip
        ready = await events.wait_for("ready", count=3, timeout=60)
        assert sorted((e.pod.role, e.pod.role_set, e.pod.replica_index) for e in ready) == [
            ("decode", "pd-0", 0), ("decode", "pd-0", 1), ("prefill", "pd-0", 0)
        ]  # fmt: skip

        def decode_acknowledged() -> bool:
            status = statuses.last
            if status is None:
                return False
            decode = next(role for role in status.roles if role.name == "decode")
            return (decode.desired_replicas, decode.ready_replicas, decode.last_decision_ts) == (2, 2, decided_at)

        await eventually(decode_acknowledged, 10)
        status = statuses.last
        assert status is not None
        assert (status.mode, status.desired_replicas, status.ready_replicas) == ("pool", 1, 1)
        prefill = next(role for role in status.roles if role.name == "prefill")
        assert (prefill.desired_replicas, prefill.last_decision_ts) == (1, 0.0)
