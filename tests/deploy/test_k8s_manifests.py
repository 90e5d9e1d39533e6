"""Every Kubernetes manifest passes kubernetes-validate --strict (unknown fields fail, not just wrong types)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VALIDATE = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "--no-warn"]


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_every_manifest_is_strictly_valid() -> None:
    result = subprocess.run([*VALIDATE, *map(str, _manifests())], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.relative_to(K8S).as_posix() for p in _manifests()}


def test_every_service_has_a_workload_with_health_probes() -> None:
    deployments = {}
    for path in _manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in ("Deployment", "DaemonSet"):
                deployments[(doc["kind"], doc["metadata"]["name"])] = doc
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
    broken.write_text((K8S / "router.yaml").read_text().replace("image:", "imagee:", 1))
    result = subprocess.run([*VALIDATE, str(broken)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0


def _documents() -> dict[tuple[str, str], dict]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in _manifests()
        for doc in yaml.safe_load_all(path.read_text())
        if doc
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
        kind = "DaemonSet" if service == "gpu-doctor" else "Deployment"
        container = documents[(kind, service)]["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        assert env["BRIXMESH_NATS_USER"]["value"] == service
        assert env["BRIXMESH_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "brixmesh-secrets",
            "key": password_variable(service),
        }
        has_admin_routes = service in ("orchestrator", "autoscaler", "router", "adapter-manager", "gpu-doctor")
        assert ("BRIXMESH_ADMIN_TOKEN" in env) == has_admin_routes
