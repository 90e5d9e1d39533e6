"""The orchestrator's Ray backend on a real loopback Ray cluster (head + two worker nodes, separate
processes): a 2-node engine group is placed on both workers, serves through its head, and is replaced as a
whole when a worker node is lost; the events on ``pods.*`` tell the story."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from brixmesh.common.bus import Bus
from brixmesh.common.servers import NatsServer
from tests.orchestrator.orchestrator_proc import PodEventLog, run_orchestrator
from tests.ray.conftest import RAY_ENV, LoopbackCluster, processes_mentioning, wait_gone

FAST_SIM = ["--perf-model", "constant", "--time-to-first-token", "5", "--inter-token-latency", "5"]
GROUP = {
    "model": "tiny-llama", "engine": "sim", "replicas": 1, "nodes": 2, "tensor_parallel_size": 2,
    "engine_args": FAST_SIM, "drain_grace_s": 5,
}  # fmt: skip
STARTUP_S = 120.0  # actor worker processes start slowly on a loaded 2-core host


@pytest.fixture
async def bus(fresh_nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(fresh_nats_server.url, name="ray-test")
    yield bus
    await bus.close()


def short(node_id: str) -> str:
    return node_id[:12]


async def test_group_spans_both_workers_and_is_replaced_whole_when_a_node_dies(
    ray_cluster: LoopbackCluster, bus: Bus, fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    node_a = short(ray_cluster.workers["worker_a"].node_id)
    node_b = short(ray_cluster.workers["worker_b"].node_id)
    env = {**RAY_ENV, "BRIXMESH_BACKEND": "ray", "BRIXMESH_RAY_ADDRESS": ray_cluster.address}
    events = await PodEventLog.start(bus)
    async with run_orchestrator(fresh_nats_server.url, tmp_path, env, startup_timeout=60) as orch:
        assert (await orch.http.put("/v1/deployments/big", json=GROUP)).status_code in (200, 201)
        (ready,) = await events.wait_for("ready", timeout=STARTUP_S)
        first = ready.pod
        assert first.labels["backend"] == "ray"
        assert set(first.labels["ray_nodes"].split(",")) == {node_a, node_b}, "one rank per worker node"
        assert first.endpoint.startswith("http://127.0.0.1:")
        assert first.kv_events_endpoint.startswith("tcp://127.0.0.1:")
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(first.endpoint + "/v1/completions",
                                     json={"model": "tiny-llama", "prompt": "hello", "max_tokens": 3})
            assert answer.status_code == 200, answer.text

        ray_cluster.kill_worker("worker_b")
        (removed,) = await events.wait_for("removed", pod=first.pod, timeout=60)
        assert "engine group lost" in removed.reason
        # no half group: the survivor's rank went with it, and the engine stopped answering
        async with httpx.AsyncClient(timeout=2) as http:
            with pytest.raises(httpx.HTTPError):
                await http.get(first.endpoint + "/health")

        # the survivor alone cannot hold a 2-node group (STRICT_SPREAD): the replacement waits for a node
        node_c = short(ray_cluster.add_worker("worker_c"))
        (replaced,) = await events.wait_for(
            "ready", where=lambda e: e.pod.pod != first.pod, timeout=STARTUP_S
        )
        assert set(replaced.pod.labels["ray_nodes"].split(",")) == {node_a, node_c}

        # scale to zero: the group is drained, then removed, and its engine and actors are gone
        assert (await orch.http.patch("/v1/deployments/big", json={"replicas": 0})).status_code == 200
        kinds = [e.kind for e in await events.wait_for(pod=replaced.pod.pod, count=4, timeout=60)]
        assert kinds == ["added", "ready", "draining", "removed"]
    port = replaced.pod.endpoint.rsplit(":", 1)[1]
    left = wait_gone(lambda: processes_mentioning(f"--port {port} "), timeout_s=10)
    assert not left, f"engine of the removed group still running: {left}"


async def test_role_sets_of_groups_are_announced_with_their_roles_and_adopted_across_restarts(
    ray_cluster: LoopbackCluster, bus: Bus, fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    workers = {short(node.node_id) for node in ray_cluster.workers.values()}
    env = {**RAY_ENV, "BRIXMESH_BACKEND": "ray", "BRIXMESH_RAY_ADDRESS": ray_cluster.address,
           "BRIXMESH_STOP_PODS_ON_EXIT": "0"}  # fmt: skip
    pd = {**GROUP, "roles": [{"name": "prefill"}, {"name": "decode"}], "update": {"role_order": "parallel"}}
    events = await PodEventLog.start(bus)
    async with run_orchestrator(fresh_nats_server.url, tmp_path, env, startup_timeout=60) as orch:
        assert (await orch.http.put("/v1/deployments/pd", json=pd)).status_code in (200, 201)
        ready = await events.wait_for("ready", count=2, timeout=STARTUP_S)
    assert {e.pod.role for e in ready} == {"prefill", "decode"}
    assert {e.pod.role_set for e in ready} == {"pd-0"}
    for event in ready:
        assert set(event.pod.labels["ray_nodes"].split(",")) == workers
    pods = {e.pod.pod for e in ready}

    # a new orchestrator adopts both groups as they are: no removal, no new group
    env["BRIXMESH_STOP_PODS_ON_EXIT"] = "1"
    async with run_orchestrator(fresh_nats_server.url, tmp_path, env, startup_timeout=60) as orch:
        adopted = await events.wait_for(
            "ready", count=2, where=lambda e: e.reason == "adopted from an earlier orchestrator", timeout=60
        )
        assert {e.pod.pod for e in adopted} == pods
        assert not events.matching("removed")
        assert (await orch.http.delete("/v1/deployments/pd")).status_code == 200
        removed = await events.wait_for("removed", count=2, timeout=60)
        assert {e.pod.pod for e in removed} == pods
