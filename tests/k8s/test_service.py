"""The orchestrator process itself with BRIXMESH_BACKEND=kubernetes, against the emulated API and a real NATS:
pods of a ModelDeployment are announced on pods.* (router, kv-index and autoscaler consume them unchanged),
an autoscaler's decision on scale.decisions.* ends up in the resource's spec.replicas, and any node's
gpu-doctor decision on gpu.decisions.<node> drains the pod it names there."""

from __future__ import annotations

import time
from pathlib import Path

from kmock import resource

from brixmesh.common.bus import Bus
from brixmesh.common.messages import GpuDecision, ScaleDecision
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import GPU_DECISIONS, SCALE_DECISIONS
from brixmesh.common.kube.api import Api
from tests.k8s.conftest import NAMESPACE
from tests.k8s.emulator import ApiServer, kubelet, pods_of
from tests.k8s.replica import MD, model_deployment
from tests.orchestrator.orchestrator_proc import PodEventLog, run_orchestrator
from tests.waiting import eventually


PODS = resource("", "v1", "pods")


async def test_the_orchestrator_on_kubernetes_announces_pods_and_writes_decisions_to_the_resource(
    apiserver: tuple[ApiServer, str], api: Api, nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    emulator, url = apiserver
    events = await PodEventLog.start(bus)
    settings = {
        "BRIXMESH_BACKEND": "kubernetes", "BRIXMESH_K8S_API_URL": url, "BRIXMESH_K8S_NAMESPACE": NAMESPACE,
        "BRIXMESH_K8S_LEASE_S": "2", "BRIXMESH_K8S_RENEW_S": "0.5", "BRIXMESH_STOP_PODS_ON_EXIT": "0",
    }  # fmt: skip
    async with (
        run_orchestrator(nats_server.url, tmp_path, settings) as orchestrator,
        kubelet(emulator, NAMESPACE),
    ):
        await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=2))
        ready = await events.wait_for(kind="ready", count=2)
        ips = {pod["status"]["podIP"] for pod in pods_of(emulator, "chat")}
        assert {event.pod.endpoint for event in ready} == {f"http://{ip}:8000" for ip in ips}

        decision = ScaleDecision(
            deployment="chat", current_replicas=2, desired_replicas=3, algorithm="kpa", reason="test",
            ts=time.time(),
        )  # fmt: skip

        async def written_back() -> bool:
            # re-sent as the autoscaler does until acknowledged: one message may come before the subscription
            await bus.publish(SCALE_DECISIONS.format(deployment="chat"), decision)
            obj = await api.custom.get_namespaced_custom_object(*MD, "chat")
            return obj["spec"]["replicas"] == 3

        await eventually(written_back, 30)
        await events.wait_for(kind="ready", count=3)

        # a node's gpu-doctor publishes on its own node's subject: the one orchestrator hears every node
        faulty = pods_of(emulator, "chat")[0]["metadata"]["name"]
        await emulator.write(PODS, NAMESPACE, faulty, {"spec": {"nodeName": "gpu-node-7"}})
        fault = GpuDecision(
            decision_id="d1", node="gpu-node-7", pods=[faulty], action="restart_engine", severity="critical",
            signal="probe_failures", reason="test", ts=time.time(),
        )  # fmt: skip

        async def drained() -> bool:
            await bus.publish(GPU_DECISIONS.format(node="gpu-node-7"), fault)  # re-sent, as the doctor does
            return faulty not in {pod["metadata"]["name"] for pod in pods_of(emulator, "chat")}

        await eventually(drained, 30)
        await eventually(lambda: len(pods_of(emulator, "chat")) == 3, 30)  # replaced
        assert orchestrator.process.poll() is None, "the orchestrator stopped"
        lease = await api.coordination.read_namespaced_lease("brixmesh-orchestrator", NAMESPACE)
        assert lease.spec.holder_identity
    lease = await api.coordination.read_namespaced_lease("brixmesh-orchestrator", NAMESPACE)
    assert not lease.spec.holder_identity, "a graceful stop hands the Lease back at once"
    assert len(pods_of(emulator, "chat")) == 3, (
        "a stopping orchestrator leaves its engines to the next leader"
    )
