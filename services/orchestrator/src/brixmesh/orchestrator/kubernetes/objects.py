"""The Kubernetes objects of a deployment's pods, built from its spec, and what is read back from the pods
Kubernetes reports. Pure: no API calls.

A pod carries everything needed to adopt it after an orchestrator restart or failover: labels for selection
(deployment, role set, role, model, engine, template generation, slot) and an annotation with the rest of
its :class:`~brixmesh.common.messages.PodInfo` (the endpoints follow from its IP once it has one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from brixmesh.common import vllm_cpu
from brixmesh.common.messages import NODE_LABEL, PodInfo, PodPhase

from brixmesh.orchestrator.kubernetes.resource import GROUP, KIND, VERSION, ClusterFields
from brixmesh.orchestrator.launch import DEFAULTS, KV_TOPIC, SIM_BLOCK_SIZE, last_int_flag
from brixmesh.orchestrator.local_backend import place_in_role_set, pod_info
from brixmesh.orchestrator.spec import DeploymentSpec, RoleMember

HTTP_PORT = 8000
KV_EVENTS_PORT = 5557
KV_REPLAY_PORT = 5558
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "brixmesh-orchestrator"
DEPLOYMENT_LABEL = "brixmesh.io/deployment"
ROLE_LABEL = "brixmesh.io/role"
ROLE_SET_LABEL = "brixmesh.io/role-set"
ROLE_NAME_LABEL = "brixmesh.io/role-name"
"""The role's name in a role-set deployment (``brixmesh.io/role`` is its function); the deployment's
function for a single-role one. Each has its headless Service."""
MODEL_LABEL = "brixmesh.io/model"
ENGINE_LABEL = "brixmesh.io/engine"
GENERATION_LABEL = "brixmesh.io/generation"
SLOT_LABEL = "brixmesh.io/slot"
DRAINING_LABEL = "brixmesh.io/draining"
POD_INFO_ANNOTATION = "brixmesh.io/pod-info"
POD_SELECTOR = f"{MANAGED_BY}={MANAGER}"
PRESTOP_SLEEP_S = 5
"""A pod deleted by anyone (kubectl, a node drain) is announced draining at once and keeps serving this long
before SIGTERM, so routers stop sending to it first; the orchestrator's own drains wait for idle before."""
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]")


def label_value(text: str) -> str:
    """``text`` as a valid label value (63 characters of ``[A-Za-z0-9._-]``, alphanumeric at both ends)."""
    return _LABEL_VALUE.sub("-", text)[:63].strip("-_.")


@dataclass(frozen=True)
class Images:
    """The container image per engine (a ModelDeployment's ``image`` overrides it)."""

    sim: str
    vllm: str
    sglang: str

    def for_engine(self, engine: str) -> str:
        return getattr(self, engine)


def engine_command(spec: DeploymentSpec) -> list[str]:
    kv_config = vllm_cpu.kv_events_config(f"tcp://*:{KV_EVENTS_PORT}", f"tcp://*:{KV_REPLAY_PORT}")
    common = [
        "--host", "0.0.0.0", "--port", str(HTTP_PORT), "--served-model-name", spec.model,
        "--kv-events-config", kv_config, *spec.engine_args,
    ]  # fmt: skip
    model = spec.model_path or spec.model
    if spec.engine == "sim":
        return ["python", "-m", "brixmesh.engine_sim", "serve", model, *common]
    if spec.engine == "vllm":
        return ["vllm", "serve", model, *common]
    return ["python3", "-m", "sglang.launch_server", "--model-path", model, *common]


def selector_labels(deployment: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, DEPLOYMENT_LABEL: deployment}


def owner_reference(deployment: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": deployment, "uid": uid,
        "controller": True, "blockOwnerDeletion": True,
    }  # fmt: skip


def role_name(spec: DeploymentSpec, member: RoleMember | None) -> str:
    return member.role if member is not None else spec.role


def pod_resources(
    deployment: DeploymentSpec, cluster: ClusterFields, member: RoleMember | None
) -> dict[str, Any]:
    """Requests and limits of one pod: the resource's ``resources``, with a role's ``gpus`` and ``memory``
    (where the role sets them) over them."""
    cpu, memory = cluster.resources.cpu, cluster.resources.memory
    accelerators = cluster.resources.accelerator.count
    if member is not None:
        role = deployment.role_named(member.role).resources
        memory = role.memory or memory
        if "gpus" in role.model_fields_set:
            accelerators = role.gpus
    limits: dict[str, str] = {"memory": memory}
    if accelerators:
        limits[cluster.resources.accelerator.type] = str(accelerators)
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def pod_manifest(
    deployment: DeploymentSpec,
    cluster: ClusterFields,
    *,
    name: str,
    namespace: str,
    generation: int,
    slot: int,
    image: str,
    owner_uid: str | None,
    member: RoleMember | None = None,
    avoid_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    """The Pod of one replica of ``deployment`` (for a role set: of ``member``'s role in its role set),
    kept off ``avoid_nodes`` (the cordoned ones)."""
    spec = deployment if member is None else deployment.for_role(member.role)
    argv = engine_command(spec)
    info = pod_info(
        spec, name, "kubernetes", "", kv_events="", kv_replay="",
        block_size=last_int_flag(argv, "--block-size") or (SIM_BLOCK_SIZE if spec.engine == "sim" else 0),
        engine_argv=argv,
    )  # fmt: skip
    if member is not None:
        place_in_role_set(info, member, spec.engine_args)
    labels = {
        **{key: label_value(value) for key, value in spec.labels.items()},
        **selector_labels(spec.name),
        ROLE_LABEL: spec.role,
        ROLE_NAME_LABEL: role_name(spec, member),
        ROLE_SET_LABEL: label_value(info.role_set),
        MODEL_LABEL: label_value(spec.model),
        ENGINE_LABEL: spec.engine,
        GENERATION_LABEL: str(generation),
        SLOT_LABEL: str(slot),
    }
    defaults = DEFAULTS[spec.engine]
    container: dict[str, Any] = {
        "name": "engine",
        "image": image,
        "command": argv,
        "env": [{"name": key, "value": value} for key, value in sorted(spec.env.items())],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "kv-events", "containerPort": KV_EVENTS_PORT},
            {"name": "kv-replay", "containerPort": KV_REPLAY_PORT},
        ],
        "resources": pod_resources(deployment, cluster, member),
        "readinessProbe": {
            "httpGet": {"path": spec.readiness.path or defaults.readiness_path, "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": spec.readiness.path or defaults.readiness_path, "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": max(1, int((spec.readiness.timeout_s or defaults.readiness_timeout_s) / 5)),
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
    }
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {POD_INFO_ANNOTATION: msgspec.json.encode(info).decode()},
    }
    if owner_uid:
        metadata["ownerReferences"] = [owner_reference(spec.name, owner_uid)]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": {"always": "Always", "on-failure": "OnFailure", "never": "Never"}[
            spec.restart_policy
        ],
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_S + int(defaults.stop_grace_s),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    if cluster.node_selector:
        pod_spec["nodeSelector"] = dict(cluster.node_selector)
    if avoid_nodes:  # by the node's name, not its hostname label: the two differ on some clouds
        off_nodes = {"key": "metadata.name", "operator": "NotIn", "values": list(avoid_nodes)}
        pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [off_nodes]}]
        }}}  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def role_service_name(deployment: str, role: str) -> str:
    return f"{deployment}-{role}"


def role_service_manifest(
    deployment: str, role: str, *, namespace: str, owner_uid: str | None
) -> dict[str, Any]:
    """A headless Service per role (by name): DNS names for its pods (P/D peers, debugging), no virtual IP."""
    metadata: dict[str, Any] = {
        "name": role_service_name(deployment, role),
        "namespace": namespace,
        "labels": {**selector_labels(deployment), ROLE_NAME_LABEL: role},
    }
    if owner_uid:
        metadata["ownerReferences"] = [owner_reference(deployment, owner_uid)]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": {**selector_labels(deployment), ROLE_NAME_LABEL: role},
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                {"name": "kv-events", "port": KV_EVENTS_PORT, "targetPort": "kv-events"},
                {"name": "kv-replay", "port": KV_REPLAY_PORT, "targetPort": "kv-replay"},
            ],
        },
    }


@dataclass(frozen=True)
class ObservedPod:
    """One engine pod as Kubernetes reports it."""

    info: PodInfo
    generation: int
    slot: int
    phase: PodPhase
    terminating: bool
    failed: bool
    """Its containers ended for good (phase Failed/Succeeded): it is replaced."""
    created: str


def observe_pod(obj: Mapping[str, Any]) -> ObservedPod | None:
    """What a pod object says, or None if it is not one of ours (no pod-info annotation)."""
    metadata = obj.get("metadata") or {}
    labels = metadata.get("labels") or {}
    raw_info = (metadata.get("annotations") or {}).get(POD_INFO_ANNOTATION)
    if raw_info is None or labels.get(MANAGED_BY) != MANAGER:
        return None
    try:
        info = msgspec.json.decode(raw_info, type=PodInfo)
    except msgspec.DecodeError:
        return None
    status = obj.get("status") or {}
    ip = status.get("podIP") or ""
    if ip:
        base = f"http://{ip}:{HTTP_PORT}"
        info.endpoint, info.metrics_url = base, base + "/metrics"
        info.kv_events_endpoint = f"tcp://{ip}:{KV_EVENTS_PORT}"
        info.kv_replay_endpoint = f"tcp://{ip}:{KV_REPLAY_PORT}"
        info.kv_events_topic = KV_TOPIC
    node = (obj.get("spec") or {}).get("nodeName")
    if node:
        info.labels[NODE_LABEL] = node
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    terminating = bool(metadata.get("deletionTimestamp"))
    failed = status.get("phase") in ("Failed", "Succeeded")
    if terminating or labels.get(DRAINING_LABEL) == "true":
        phase: PodPhase = "draining"
    elif failed:
        phase = "exited"
    elif ready and ip:
        phase = "ready"
    else:
        phase = "starting"
    return ObservedPod(
        info=info, generation=int(labels.get(GENERATION_LABEL, "0")), slot=int(labels.get(SLOT_LABEL, "0")),
        phase=phase, terminating=terminating, failed=failed, created=metadata.get("creationTimestamp", ""),
    )  # fmt: skip
