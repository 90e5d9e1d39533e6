"""What one sees of a running mesh: Debian's real ``prometheus`` scrapes a ``brixmesh up`` mesh (two simulated
engines) from the config the mesh writes, under load, and every query of every Grafana dashboard in
deploy/grafana/dashboards returns data through Prometheus' HTTP API."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from brixmesh.common.ports import free_port
from tests.mesh.conftest import RunningMesh
from tests.service_proc import stop_process_group
from tests.waiting import eventually

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def dashboard_queries() -> dict[str, str]:
    """Every panel query, keyed ``dashboard / panel / refId``."""
    queries = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                queries[f"{path.stem} / {panel['title']} / {target['refId']}"] = target["expr"]
    return queries


def test_dashboards_cover_router_engines_autoscaler_and_kv_index() -> None:
    assert {p.stem for p in DASHBOARDS.glob("*.json")} == {"router", "engines", "autoscaler", "kv-index"}
    for path in DASHBOARDS.glob("*.json"):
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] == f"brixmesh-{path.stem}" and dashboard["panels"]
        assert all(panel["datasource"]["uid"] == "prometheus" for panel in dashboard["panels"])


@pytest.fixture
def prometheus(mesh: RunningMesh, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make prometheus` (Debian's package)")
    config = mesh.state_dir.resolve() / "prometheus" / "prometheus.yml"
    assert str(config) in mesh.printed.replace("\n", "")
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process)
        log.close()


def _load(base_url: str, stop: threading.Event) -> None:
    """Streamed chats with a shared prefix; now and then a prompt longer than the model's context (a 400)."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        sent = 0
        while not stop.is_set():
            sent += 1
            content = "x " * 3000 if sent % 10 == 0 else f"You are a helpful assistant. Question {sent % 7}?"
            messages = [{"role": "user", "content": content}]
            body = {"model": "tiny-llama", "messages": messages, "max_tokens": 8, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.read()


def test_prometheus_scrapes_the_mesh_and_every_dashboard_query_returns_data(
    mesh: RunningMesh, prometheus: str
) -> None:
    queries = dashboard_queries()
    stop = threading.Event()
    loader = threading.Thread(target=_load, args=(f"http://127.0.0.1:{mesh.port}", stop), daemon=True)
    loader.start()
    empty: dict[str, str] = dict(queries)

    def all_answered() -> bool:
        for name, expr in list(empty.items()):
            try:
                response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
            except httpx.HTTPError:
                return False
            if response.status_code == 503:  # Prometheus answers 503 until its TSDB has opened
                return False
            answer = response.json()
            assert answer["status"] == "success", (name, answer)
            if answer["data"]["result"]:
                del empty[name]
        return not empty

    try:
        asyncio.run(eventually(all_answered, 150, describe=lambda: f"no data for {sorted(empty)}"))
    finally:
        stop.set()
        loader.join(30)
    targets = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
    services = {t["labels"]["service"] for t in targets}
    expected = {
        "orchestrator", "kv-index", "kv-tier", "autoscaler", "adapter-manager", "gpu-doctor", "router", "engine"
    }
    assert services == expected
    assert sum(t["labels"]["service"] == "engine" for t in targets) == 2
    assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]
