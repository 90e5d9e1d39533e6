"""The objects the Kubernetes backend builds, and the CRD schemas, without an API server (pure functions)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from brixmesh.orchestrator.kubernetes.objects import (
    ROLE_NAME_LABEL,
    observe_pod,
    pod_manifest,
    role_service_manifest,
)
from brixmesh.orchestrator.kubernetes.resource import (
    ClusterFields,
    model_deployment_crd,
    parse_resource,
    quantity,
)
from brixmesh.orchestrator.spec import RoleMember, SpecError, parse_spec

KUBERNETES = "1.34.0"


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        nodes += _walk(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            nodes += _walk(schema[key], f"{path}[{key}]")
    return nodes


def test_the_generated_schema_is_structural() -> None:
    """apiextensions.k8s.io/v1 rules: every node typed, no references or unions, no
    additionalProperties beside properties."""
    schema = model_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "default"} & set(node), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert not ("properties" in node and "additionalProperties" in node), path
    spec = schema["properties"]["spec"]["properties"]
    assert spec["role"]["enum"] == ["prefill", "decode", "both"]
    assert spec["readiness"]["properties"]["timeout_s"] == {
        "minimum": 0, "exclusiveMinimum": True, "type": "number", "nullable": True
    }  # fmt: skip
    assert "cpus" not in spec and "external" not in spec and "name" not in spec
    assert spec["roles"]["items"]["properties"]["resources"]["properties"]["gpus"]["minimum"] == 0


def test_a_role_set_pod_is_a_strictly_valid_pod_with_its_role_resources() -> None:
    spec = parse_spec({
        "name": "pd", "model": "meta-llama/Llama-3.1-8B", "engine": "vllm", "replicas": 2,
        "env": {"HF_HUB_OFFLINE": "1"},
        "roles": [{"name": "prefill", "resources": {"gpus": 2, "memory": "64Gi"}}, {"name": "decode"}],
    })  # fmt: skip
    cluster = ClusterFields.model_validate({"resources": {"cpu": "8", "memory": "32Gi"}})
    pod = pod_manifest(
        spec, cluster, name="pd-1-prefill-abcde", namespace="brixmesh", generation=3, slot=0,
        image="vllm/vllm-openai:v0.32.0", owner_uid="uid-1", member=RoleMember(1, "prefill", 0),
        avoid_nodes=["gpu-node-3", "gpu-node-9"],
    )  # fmt: skip
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    [term] = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    off_nodes = {"key": "metadata.name", "operator": "NotIn", "values": ["gpu-node-3", "gpu-node-9"]}
    assert term == {"matchFields": [off_nodes]}
    labels = pod["metadata"]["labels"]
    assert labels["brixmesh.io/model"] == "meta-llama-Llama-3.1-8B"  # '/' is not allowed in a label value
    assert (labels["brixmesh.io/role-set"], labels[ROLE_NAME_LABEL], labels["brixmesh.io/role"]) == (
        "pd-1", "prefill", "prefill"
    )  # fmt: skip
    engine = pod["spec"]["containers"][0]
    assert engine["command"][:3] == ["vllm", "serve", "meta-llama/Llama-3.1-8B"]
    assert engine["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}
    }  # fmt: skip
    assert engine["env"] == [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    kubernetes_validate.validate(
        role_service_manifest("pd", "prefill", namespace="brixmesh", owner_uid="uid-1"),
        KUBERNETES,
        strict=True,
    )


def test_what_a_pod_reports_becomes_its_phase_and_endpoints() -> None:
    spec = parse_spec({"name": "chat", "model": "tiny-llama"})
    pod = pod_manifest(
        spec,
        ClusterFields(),
        name="chat-abcde",
        namespace="ns",
        generation=1,
        slot=0,
        image="i",
        owner_uid=None,
    )
    assert observe_pod({**pod, "metadata": {**pod["metadata"], "annotations": {}}}) is None  # not ours
    assert observe_pod(pod).phase == "starting" and observe_pod(pod).info.endpoint == ""
    running = {**pod, "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]}}
    observed = observe_pod(running)
    assert observed.phase == "ready" and observed.info.endpoint == "http://10.1.2.3:8000"
    assert observed.info.kv_events_endpoint == "tcp://10.1.2.3:5557" and observed.info.block_size == 16
    terminating = {**running, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert observe_pod(terminating).phase == "draining"
    failed = {**running, "status": {**running["status"], "phase": "Failed"}}
    assert observe_pod(failed).failed


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"model": "m", "cpus": "0-3"}, "does not apply on Kubernetes"),
        ({"model": "m", "resources": {"memory": "lots"}}, "not a quantity"),
        ({"model": "m", "resources": {"cpu": "0"}}, "more than zero"),
        ({"model": "m", "engine": "tgi"}, "unknown engine"),
    ],
)
def test_a_resource_the_models_refuse_says_which_field(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(SpecError, match=problem):
        parse_resource({"metadata": {"name": "x"}, "spec": spec})


def test_quantities() -> None:
    assert quantity("500m") == 0.5 and quantity("2") == 2 and quantity("16Gi") == 16 * 2**30
    with pytest.raises(ValueError):
        quantity("2 cores")
