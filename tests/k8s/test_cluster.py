"""The orchestrator on an emulated Kubernetes API (kmock + schema validation, resourceVersions, 409, 410; see
tests/k8s/emulator.py): ModelDeployments in, pods and headless Services out, pods.* events from what the
API reports, scaling through the resource, refusals as conditions, watches that resume, Lease failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kmock import KubernetesError, resource
from kubernetes_asyncio.client.exceptions import ApiException

from brixmesh.common.messages import NODE_LABEL, GpuDecision, ScaleDecision
from brixmesh.common.kube.api import Api
from brixmesh.orchestrator.kubernetes.cordons import CONFIG_MAP, ConfigMapCordons
from brixmesh.orchestrator.kubernetes.objects import HTTP_PORT
from brixmesh.orchestrator.launch import DEFAULTS
from tests.k8s.conftest import NAMESPACE
from tests.k8s.emulator import ApiServer, kubelet, pods_of
from tests.k8s.replica import MD, Replica, model_deployment
from tests.waiting import eventually

PODS = resource("", "v1", "pods")


@pytest.fixture
async def leader(apiserver: tuple[ApiServer, str]) -> AsyncIterator[Replica]:
    replica = Replica(apiserver[1], "orchestrator-a")
    await replica.start()
    await eventually(lambda: replica.led_at is not None)
    yield replica
    await replica.stop()


async def resource_of(api: Api, name: str) -> dict[str, Any]:
    return await api.custom.get_namespaced_custom_object(*MD, name)


async def test_a_model_deployment_becomes_labelled_owned_probed_pods_announced_from_what_kubernetes_reports(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    created = await api.custom.create_namespaced_custom_object(
        *MD[:3], MD[3], model_deployment("chat", replicas=2, resources={"cpu": "2", "memory": "4Gi"})
    )
    await eventually(lambda: len(pods_of(emulator, "chat")) == 2)
    for pod in pods_of(emulator, "chat"):
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "brixmesh-orchestrator"
        assert {labels[k] for k in ("brixmesh.io/role", "brixmesh.io/model", "brixmesh.io/engine")} == {
            "both", "tiny-llama", "sim"
        }  # fmt: skip
        assert pod["metadata"]["ownerReferences"] == [{
            "apiVersion": "brixmesh.io/v1alpha1", "kind": "ModelDeployment", "name": "chat",
            "uid": created["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
        }]  # fmt: skip
        engine = pod["spec"]["containers"][0]
        assert engine["readinessProbe"]["httpGet"] == {"path": DEFAULTS["sim"].readiness_path, "port": "http"}
        assert engine["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
        assert engine["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
        assert engine["command"][:4] == ["python", "-m", "brixmesh.engine_sim", "serve"]
    [service] = emulator.objects_of("services")
    assert service["metadata"]["name"] == "chat-both" and service["spec"]["clusterIP"] == "None"
    assert not leader.events, "nothing is announced before Kubernetes reports an IP"

    async with kubelet(emulator, NAMESPACE):
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 2)
    for pod in pods_of(emulator, "chat"):
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        assert leader.kinds(name) == ["added", "ready"]
        info = next(e.pod for e in leader.events if e.pod.pod == name)
        assert info.endpoint == f"http://{ip}:{HTTP_PORT}" and info.kv_events_endpoint == f"tcp://{ip}:5557"
        assert (info.deployment, info.model, info.engine, info.block_size) == (
            "chat",
            "tiny-llama",
            "sim",
            16,
        )

    async def status_shows_two_ready() -> bool:
        status = (await resource_of(api, "chat")).get("status", {})
        return status.get("readyReplicas") == 2

    await eventually(status_shows_two_ready)
    status = (await resource_of(api, "chat"))["status"]
    assert status["replicas"] == 2 and status["roles"] == {"both": {"replicas": 2, "ready": 2}}
    assert status["observedGeneration"] == 1
    assert (
        status["selector"] == "app.kubernetes.io/managed-by=brixmesh-orchestrator,brixmesh.io/deployment=chat"
    )
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Accepted"]["status"] == "True" and conditions["Ready"]["status"] == "True"


async def test_scaling_the_resource_adds_pods_and_drains_surplus_ones(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=1))
    async with kubelet(emulator, NAMESPACE):
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 1)
        # kubectl scale: the scale subresource writes spec.replicas
        await api.custom.patch_namespaced_custom_object(
            *MD, "chat", {"spec": {"replicas": 3}}, _content_type="application/merge-patch+json"
        )
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 3)
        await api.custom.patch_namespaced_custom_object(
            *MD, "chat", {"spec": {"replicas": 1}}, _content_type="application/merge-patch+json"
        )
        await eventually(lambda: len(pods_of(emulator, "chat")) == 1)
    drained = [e.pod.pod for e in leader.events if e.kind == "draining"]
    assert len(drained) == 2
    for name in drained:
        assert leader.kinds(name) == ["added", "ready", "draining", "removed"]
    [kept] = pods_of(emulator, "chat")
    assert kept["metadata"]["name"] not in drained

    async def status_shows_one() -> bool:
        status = (await resource_of(api, "chat")).get("status", {})
        return status.get("replicas") == 1 and status.get("observedGeneration") == 3

    await eventually(status_shows_one)


async def test_an_autoscaler_decision_is_written_to_the_resource_retrying_on_conflict(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=1))
    await eventually(lambda: "chat" in leader.orchestrator.deployments)
    conflicts = []

    async def someone_else_writes_first(request: Any) -> None:
        """A concurrent writer (a user editing labels) gets in between the read and the write, twice."""
        body = request.data if isinstance(request.data, dict) else {}
        if request.name == "chat" and "resourceVersion" in body.get("metadata", {}) and len(conflicts) < 2:
            conflicts.append(body["metadata"]["resourceVersion"])
            await emulator.write(
                resource(*MD[:2], MD[3]),
                NAMESPACE,
                "chat",
                {"metadata": {"labels": {"team": f"edit-{len(conflicts)}"}}},
            )

    emulator.before_patch = someone_else_writes_first

    decision = ScaleDecision(
        deployment="chat",
        desired_replicas=3,
        current_replicas=1,
        algorithm="kpa",
        reason="load",
        ts=time.time(),
    )
    assert leader.orchestrator.apply_decision(decision) == "applied"
    assert await leader.cluster.sync.persist_replicas("chat")
    assert len(conflicts) == 2
    current = await resource_of(api, "chat")
    assert current["spec"]["replicas"] == 3 and current["metadata"]["labels"] == {"team": "edit-2"}
    await eventually(lambda: len(pods_of(emulator, "chat")) == 3)


async def test_refused_resources_say_why_and_leave_nothing_behind(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    # schema-invalid: the API server itself refuses (as a real one would with the generated CRD)
    for bad in ({"replicas": -1}, {"role": "prefil"}, {"replicaz": 2}):
        with pytest.raises(ApiException) as refused:
            await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("bad", **bad))
        assert refused.value.status == 422
    # valid for the schema, refused by the orchestrator's own checks: a condition says why
    await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("tgi", engine="tgi"))
    await api.custom.create_namespaced_custom_object(
        *MD[:3], MD[3], model_deployment("huge", resources={"accelerator": {"count": 64}})
    )
    await api.custom.create_namespaced_custom_object(
        *MD[:3], MD[3], model_deployment("flags", engine_args=["--port", "9000"])
    )

    async def refusal(name: str) -> str:
        for condition in (await resource_of(api, name)).get("status", {}).get("conditions", []):
            if condition["type"] == "Accepted" and condition["status"] == "False":
                assert condition["reason"] == "InvalidSpec"
                return condition["message"]
        return ""

    reasons = {"tgi": "unknown engine 'tgi'", "huge": "64 nvidia.com/gpu per pod is more than a node",
               "flags": "--port is set by the orchestrator"}  # fmt: skip
    for name, why in reasons.items():
        await eventually(lambda name=name: refusal(name))
        assert why in await refusal(name)
    assert emulator.objects_of("pods") == [] and emulator.objects_of("services") == []
    assert leader.orchestrator.deployments == {}


async def test_a_pod_deleted_by_someone_else_is_announced_and_replaced(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=2))
    async with kubelet(emulator, NAMESPACE):
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 2)
        victim = pods_of(emulator, "chat")[0]["metadata"]["name"]
        await api.core.delete_namespaced_pod(victim, NAMESPACE)
        await eventually(lambda: "removed" in leader.kinds(victim))
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 3)
    assert len(pods_of(emulator, "chat")) == 2
    assert victim not in {pod["metadata"]["name"] for pod in pods_of(emulator, "chat")}


def gpu_decision(action: str, pods: list[str], node: str, gpu: str = "") -> GpuDecision:
    return GpuDecision(
        decision_id="d", node=node, gpu=gpu, pods=pods, action=action, severity="critical", signal="xid",
        reason="test", ts=time.time(),
    )  # fmt: skip


async def test_gpu_doctor_decisions_drain_pods_on_their_node_and_a_cordoned_node_gets_no_replacement(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    """Every node's gpu-doctor speaks to the one orchestrator: it drains the pods a decision names that run on
    the decision's node; a cordoned node is kept out of replacements by node affinity, and the cordon outlives
    the leader in a ConfigMap. GPUs are the device plugin's to place, so a GPU fault cordons nothing here."""
    emulator, _ = apiserver
    orchestrator, backend = leader.orchestrator, leader.cluster.backend
    await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=2))
    async with kubelet(emulator, NAMESPACE):
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 2)
        first, second = sorted(pod["metadata"]["name"] for pod in pods_of(emulator, "chat"))
        for name, node in ((first, "node-a"), (second, "node-b")):  # what the scheduler would write
            await emulator.write(PODS, NAMESPACE, name, {"spec": {"nodeName": node}})
        placed = {first: "node-a", second: "node-b"}
        await eventually(lambda: {pod.name: pod.info.labels.get(NODE_LABEL) for pod in backend.list_pods()}
                         == placed)  # fmt: skip
        apply = orchestrator.apply_gpu_decision

        assert apply(gpu_decision("restart_engine", [first], "node-b")) == "unchanged"  # not node-b's pod
        assert apply(gpu_decision("observe", [first], "node-a")) == "observed"
        assert apply(gpu_decision("cordon_node", [first], "node-a")) == "applied"
        assert apply(gpu_decision("cordon_node", [first], "node-a")) == "unchanged"  # resent
        await eventually(lambda: first not in {pod["metadata"]["name"] for pod in pods_of(emulator, "chat")})
        await eventually(lambda: len(pods_of(emulator, "chat")) == 2)
        assert leader.kinds(first) == ["added", "ready", "draining", "removed"]
        assert leader.kinds(second) == ["added", "ready"]
        [replacement] = [pod for pod in pods_of(emulator, "chat") if pod["metadata"]["name"] != second]
        affinity = replacement["spec"]["affinity"]["nodeAffinity"]
        required = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
        off_node_a = {"key": "metadata.name", "operator": "NotIn", "values": ["node-a"]}
        assert required == {"nodeSelectorTerms": [{"matchFields": [off_node_a]}]}

        assert apply(gpu_decision("replace_pod", [second], "node-b", gpu="1")) == "applied"
        await eventually(lambda: second not in {pod["metadata"]["name"] for pod in pods_of(emulator, "chat")})
    assert [(cordon.node, cordon.gpu) for cordon in backend.cordons.all()] == [("node-a", "")]

    await backend.cordons.flushed()
    stored = await api.core.read_namespaced_config_map(CONFIG_MAP, NAMESPACE)
    assert "node-a" in stored.data["cordons.json"]
    successor = ConfigMapCordons(api, NAMESPACE)  # what the next leader reads before placing a pod
    await successor.load()
    assert [(cordon.node, cordon.gpu) for cordon in successor.all()] == [("node-a", "")]
    assert [cordon.node for cordon in successor.uncordon("node-a")] == ["node-a"]  # DELETE /v1/cordons/node-a
    await successor.flushed()
    stored = await api.core.read_namespaced_config_map(CONFIG_MAP, NAMESPACE)
    assert stored.data["cordons.json"] == "[]"


async def test_watches_resume_from_their_version_and_relist_after_410(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=2))
    async with kubelet(emulator, NAMESPACE):
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 2)
        lists_before = emulator.list_counts["pods"]

        # the stream ends (an API server's watch timeout): resumed from the last version, no list
        await emulator.end_watches(refuse=False)
        victim = pods_of(emulator, "chat")[0]["metadata"]["name"]
        await api.core.delete_namespaced_pod(victim, NAMESPACE)
        await eventually(lambda: "removed" in leader.kinds(victim))
        assert emulator.list_counts["pods"] == lists_before

        # down while a pod goes and the history is compacted: the version is gone (410), so list again
        await eventually(lambda: len(pods_of(emulator, "chat")) == 2 and
                         sum(e.kind == "ready" for e in leader.events) == 3)  # fmt: skip
        await emulator.end_watches(refuse=True)
        second = pods_of(emulator, "chat")[0]["metadata"]["name"]
        await api.core.delete_namespaced_pod(second, NAMESPACE)
        emulator.compact()
        emulator.watches_refused = False
        await eventually(lambda: "removed" in leader.kinds(second))
        assert emulator.list_counts["pods"] > lists_before
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 4)
    assert len(pods_of(emulator, "chat")) == 2


async def test_the_standby_takes_over_within_the_lease_and_adopts_the_pods(
    apiserver: tuple[ApiServer, str], api: Api
) -> None:
    emulator, url = apiserver
    lease_s = 3.0
    first = Replica(url, "orchestrator-a", lease_s=lease_s)
    second = Replica(url, "orchestrator-b", lease_s=lease_s)
    await first.start()
    await eventually(lambda: first.led_at is not None)
    await second.start()
    try:
        await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=2))
        async with kubelet(emulator, NAMESPACE):
            await eventually(lambda: sum(e.kind == "ready" for e in first.events) == 2)
            before = sorted(pod["metadata"]["name"] for pod in emulator.objects_of("pods"))
            await asyncio.sleep(1.0)  # the standby keeps trying meanwhile, and must not act
            assert second.led_at is None and second.events == []

            await first.crash()
            crashed_at = time.monotonic()
            await eventually(lambda: second.led_at is not None, timeout_s=10)
            took_over_s = second.led_at - crashed_at
            # client-go's rule: a candidate takes over once it saw the record unchanged for the lease
            # duration, so within the lease duration plus up to two retry periods (slack for a loaded machine)
            assert took_over_s <= lease_s + 2 * second.cluster.settings.renew_s + 2.0, took_over_s
            await asyncio.sleep(1.0)  # a few reconcile passes of the new leader
            after = sorted(pod["metadata"]["name"] for pod in emulator.objects_of("pods"))
            assert after == before, "the new leader adopted the pods: none duplicated or replaced"
            lease = await api.coordination.read_namespaced_lease("brixmesh-orchestrator", NAMESPACE)
            assert lease.spec.holder_identity == "orchestrator-b" and lease.spec.lease_transitions == 1

            await api.custom.patch_namespaced_custom_object(
                *MD, "chat", {"spec": {"replicas": 3}}, _content_type="application/merge-patch+json"
            )
            await eventually(lambda: len(emulator.objects_of("pods")) == 3)
    finally:
        await second.stop()


async def test_two_role_sets_become_labelled_pods_one_service_per_role_and_role_set_status(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    nixl = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'
    roles = [
        {"name": "prefill", "engine_args": ["--kv-transfer-config", nixl], "resources": {"gpus": 2}},
        {"name": "decode", "replicas": 2, "engine_args": ["--kv-transfer-config", nixl]},
    ]
    await api.custom.create_namespaced_custom_object(
        *MD[:3], MD[3], model_deployment("pd", replicas=2, roles=roles, update={"role_order": "parallel"})
    )
    async with kubelet(emulator, NAMESPACE):
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 6)
    pods = pods_of(emulator, "pd")
    by_set: dict[str, list[str]] = {}
    for pod in pods:
        labels = pod["metadata"]["labels"]
        by_set.setdefault(labels["brixmesh.io/role-set"], []).append(labels["brixmesh.io/role-name"])
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits.get("nvidia.com/gpu") == ("2" if labels["brixmesh.io/role"] == "prefill" else None)
    assert {name: sorted(members) for name, members in by_set.items()} == {
        "pd-0": ["decode", "decode", "prefill"], "pd-1": ["decode", "decode", "prefill"]
    }  # fmt: skip
    assert sorted(s["metadata"]["name"] for s in emulator.objects_of("services")) == [
        "pd-decode",
        "pd-prefill",
    ]
    announced = {e.pod.pod: e.pod for e in leader.events if e.kind == "ready"}
    assert {(info.role_set, info.role, info.kv_transfer) for info in announced.values()} == {
        (f"pd-{i}", role, "nixl") for i in (0, 1) for role in ("prefill", "decode")
    }  # fmt: skip

    async def two_ready_role_sets() -> bool:
        return (await resource_of(api, "pd")).get("status", {}).get("readyReplicas") == 2

    await eventually(two_ready_role_sets)
    status = (await resource_of(api, "pd"))["status"]
    assert status["replicas"] == 2
    assert status["roles"] == {"prefill": {"replicas": 2, "ready": 2}, "decode": {"replicas": 4, "ready": 4}}
    assert [(s["name"], s["ready"], s["pods"]) for s in status["roleSets"]] == [
        ("pd-0", True, 3),
        ("pd-1", True, 3),
    ]


async def test_deleting_the_resource_drains_and_deletes_its_pods(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=2))
    async with kubelet(emulator, NAMESPACE):
        await eventually(lambda: sum(e.kind == "ready" for e in leader.events) == 2)
        await api.custom.delete_namespaced_custom_object(*MD, "chat")
        await eventually(lambda: pods_of(emulator, "chat") == [])
    for name in {e.pod.pod for e in leader.events}:
        assert leader.kinds(name) == ["added", "ready", "draining", "removed"]
    assert leader.orchestrator.deployments == {}


async def test_pods_the_api_server_refuses_show_in_the_ready_condition(
    apiserver: tuple[ApiServer, str], api: Api, leader: Replica
) -> None:
    emulator, _ = apiserver
    quota = 'pods "chat-x" is forbidden: exceeded quota: engines, requested: nvidia.com/gpu=1, limited: 0'
    emulator.refused_creates["pods"] = (403, quota)
    await api.custom.create_namespaced_custom_object(*MD[:3], MD[3], model_deployment("chat", replicas=1))

    async def ready_condition() -> dict[str, Any]:
        conditions = (await resource_of(api, "chat")).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Ready"), {})

    await eventually(lambda: _reason_is(ready_condition(), "ReconcileFailed"))
    message = (await ready_condition())["message"]
    assert message.startswith("PodRefused: Kubernetes refused pod chat-") and "403 " + quota in message
    assert "\n" not in message and emulator.objects_of("pods") == []

    del emulator.refused_creates["pods"]  # the quota is raised: the next pass creates the pod
    await eventually(lambda: len(pods_of(emulator, "chat")) == 1)


async def _reason_is(condition: Any, reason: str) -> bool:
    return (await condition).get("reason") == reason


async def test_a_leader_that_cannot_renew_steps_down_before_the_standby_takes_over(
    apiserver: tuple[ApiServer, str]
) -> None:
    emulator, url = apiserver
    first = Replica(url, "orchestrator-a", lease_s=3.0)
    second = Replica(url, "orchestrator-b", lease_s=3.0)
    await first.start()
    await eventually(lambda: first.led_at is not None)
    await second.start()

    async def partition_the_leader(request: Any) -> None:
        """The leader's renewals stop reaching the API server (a network partition)."""
        body = request.data if isinstance(request.data, dict) else {}
        if body.get("spec", {}).get("holderIdentity") == "orchestrator-a":
            raise KubernetesError(status=503, reason="ServiceUnavailable", message="unreachable", details={})

    emulator.before_patch = partition_the_leader
    try:
        await eventually(lambda: second.led_at is not None, timeout_s=15)
        assert first.lost_at is not None and first.lost_at <= second.led_at, "never two leaders at once"
    finally:
        await first.stop()
        await second.stop()
