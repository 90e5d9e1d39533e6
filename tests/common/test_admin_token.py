"""The admin token on real service processes: every mutating or admin route answers 401 without it, health,
readiness, metrics, read-only routes and the router's OpenAI routes stay open."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from brixmesh.common.admin import needs_admin
from brixmesh.common.servers import NatsServer
from tests.service_proc import ADMIN_HEADERS, service_process

GUARDED = {
    "brixmesh.orchestrator": [
        ("PUT", "/v1/deployments/chat", {"model": "tiny-llama", "replicas": 0}),
        ("PATCH", "/v1/deployments/chat", {"replicas": 0}),
        ("DELETE", "/v1/deployments/chat", None),
        ("DELETE", "/v1/cordons/node-a", None),
    ],
    "brixmesh.autoscaler": [
        ("PUT", "/v1/autoscalers/a", {"deployment": "chat", "strategy": "apa"}),
        ("DELETE", "/v1/autoscalers/a", None),
    ],
    "brixmesh.router": [
        ("POST", "/admin/kv/lookup", {"model": "tiny-llama", "prompt_token_ids": [1, 2, 3]}),
        ("GET", "/admin/kv/pods", None),
    ],
    "brixmesh.kv_index": [("POST", "/admin/anything", {})],
    "brixmesh.adapter_manager": [("DELETE", "/v1/anything", None)],
    "brixmesh.gpu_doctor": [
        ("POST", "/admin/faults", [{"gpu": "0", "signal": "xid", "value": 79}]),
        ("GET", "/admin/faults", None),
    ],
}
OPEN = {
    "brixmesh.orchestrator": ["/v1/deployments", "/v1/pods", "/v1/cordons"],
    "brixmesh.gpu_doctor": ["/v1/decisions", "/v1/health"],
    "brixmesh.autoscaler": ["/v1/autoscalers"],
    "brixmesh.router": ["/v1/models"],
}


def test_which_requests_need_the_token() -> None:
    assert (
        needs_admin("PUT", "/v1/deployments/a") and needs_admin("DELETE", "/x") and needs_admin("POST", "/")
    )
    assert needs_admin("GET", "/admin/kv/pods") and needs_admin("HEAD", "/admin/kv/pods")
    assert not needs_admin("GET", "/v1/deployments") and not needs_admin("GET", "/metrics")
    assert not needs_admin("GET", "/healthz") and not needs_admin("OPTIONS", "/v1/pods")


async def test_every_services_admin_routes_need_the_token(nats_server: NatsServer, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for module in GUARDED:
            settings = {"BRIXMESH_STATE_DIR": str(tmp_path / module)}
            service = await stack.enter_async_context(
                service_process(module, nats_server.url, tmp_path / f"{module}.log", settings)
            )
            urls[module] = service.url
        async with httpx.AsyncClient(timeout=10) as http:
            for module, routes in GUARDED.items():
                for path in ("/healthz", "/readyz", "/metrics", *OPEN.get(module, [])):
                    assert (await http.get(urls[module] + path)).status_code == 200, (module, path)
                for method, path, body in routes:
                    for headers, why in (
                        ({}, "missing admin token"),
                        ({"Authorization": "Bearer not-the-token-at-all"}, "incorrect admin token"),
                        ({"Authorization": ADMIN_HEADERS["Authorization"].lower()}, "incorrect"),
                    ):
                        refused = await http.request(method, urls[module] + path, json=body, headers=headers)
                        assert refused.status_code == 401, (module, method, path, refused.text)
                        error = refused.json()["error"]
                        assert error["type"] == "authentication_error" and why in error["message"], error
                        assert refused.headers["www-authenticate"].startswith("Bearer")
                    if method == "PUT":  # nothing was created by the refused requests
                        assert (await http.get(urls[module] + path)).status_code == 404
                    allowed = await http.request(
                        method, urls[module] + path, json=body, headers=ADMIN_HEADERS
                    )
                    assert allowed.status_code != 401, (module, method, path, allowed.text)
                    if method == "PUT":
                        assert (await http.get(urls[module] + path)).status_code == 200


async def test_without_a_configured_token_admin_routes_are_locked(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = {"BRIXMESH_STATE_DIR": str(tmp_path / "state"), "BRIXMESH_ADMIN_TOKEN": ""}
    async with service_process(
        "brixmesh.orchestrator", nats_server.url, tmp_path / "o.log", settings
    ) as service:
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
            for headers in ({}, ADMIN_HEADERS, {"Authorization": "Bearer"}):
                refused = await http.put("/v1/deployments/chat", json={"model": "m"}, headers=headers)
                assert refused.status_code == 401
                assert "no BRIXMESH_ADMIN_TOKEN" in refused.json()["error"]["message"]
            assert (await http.get("/v1/deployments")).status_code == 200


@pytest.mark.parametrize("token", ["short", "fifteen-chars-x"])
def test_a_weak_token_is_a_one_line_startup_error(token: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "brixmesh.gpu_doctor"],
        env={"BRIXMESH_ADMIN_TOKEN": token, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "brixmesh-gpu-doctor: invalid setting BRIXMESH_ADMIN_TOKEN: must be at least 16 characters (or unset)"
    )
