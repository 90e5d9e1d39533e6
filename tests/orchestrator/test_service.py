"""The orchestrator service end to end: a real nats-server, the orchestrator process, simulated engines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodList, PodListRequest, ScaleDecision
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS_LIST, SCALE_DECISIONS
from tests.engine_sim.sim_engine import sim_engine
from tests.orchestrator.orchestrator_proc import PodEventLog, run_orchestrator

# Slow, predictable tokens: a 60-token stream takes about 2.4 s.
SLOW_SIM = ["--perf-model", "constant", "--time-to-first-token", "5", "--inter-token-latency", "40"]


@pytest.fixture
async def nats_bus(fresh_nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(fresh_nats_server.url, name="orchestrator-test")
    yield bus
    await bus.close()


def sim_deployment(replicas: int, **fields: object) -> dict[str, object]:
    return {"model": "tiny-llama", "engine": "sim", "replicas": replicas, "engine_args": SLOW_SIM, **fields}


async def decide(bus: Bus, deployment: str, desired: int, ts: float | None = None) -> None:
    decision = ScaleDecision(
        deployment=deployment, current_replicas=0, desired_replicas=desired, algorithm="test", reason="test",
        ts=time.time() if ts is None else ts,
    )
    await bus.publish(SCALE_DECISIONS.format(deployment=deployment), decision)
    await bus.client.flush()


async def test_applied_deployment_announces_pods_that_serve(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    events = await PodEventLog.start(nats_bus)
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        response = await orch.http.put("/v1/deployments/chat", json=sim_deployment(2, labels={"team": "search"}))
        assert response.status_code == 201, response.text
        added = await events.wait_for("added", count=2)
        ready = await events.wait_for("ready", count=2)
        assert {e.pod.pod for e in added} == {e.pod.pod for e in ready}
        async with httpx.AsyncClient() as client:
            for event in ready:
                info = event.pod
                assert (info.deployment, info.model, info.engine, info.role) == ("chat", "tiny-llama", "sim", "both")
                assert info.labels == {
                    "team": "search", "model": "tiny-llama", "engine": "sim", "role": "both", "deployment": "chat",
                    "backend": "local", "brixmesh.io/node": info.labels["brixmesh.io/node"],
                    "brixmesh.io/gpu-index": info.labels["brixmesh.io/gpu-index"],
                }
                assert info.metrics_url == info.endpoint + "/metrics"
                assert info.kv_events_endpoint.startswith("ipc://") and info.kv_replay_endpoint.startswith("tcp://")
                assert Path(info.kv_events_endpoint.removeprefix("ipc://")).exists()  # the engine bound it
                assert (info.kv_events_topic, info.block_size) == ("kv-events", 16)
                models = (await client.get(info.endpoint + "/v1/models")).json()
                assert [m["id"] for m in models["data"]] == ["tiny-llama"]
                assert (orch.state_dir / "logs" / f"{info.pod}.log").is_file()

        listed = await nats_bus.request(PODS_LIST.template, PodListRequest(deployment="chat"), PodList)
        assert sorted(p.pod.pod for p in listed.pods) == sorted(e.pod.pod for e in ready)
        assert all(p.ready and p.phase == "ready" and p.pid > 0 for p in listed.pods)
        other = await nats_bus.request(PODS_LIST.template, PodListRequest(model="other-model"), PodList)
        assert other.pods == []

        view = (await orch.http.get("/v1/deployments/chat")).json()
        assert (view["replicas"], view["status"]["ready"], view["spec"]["engine_args"]) == (2, 2, SLOW_SIM)
        pods = (await orch.http.get("/v1/pods", params={"deployment": "chat"})).json()["data"]
        assert {p["pod"]["pod"] for p in pods} == {e.pod.pod for e in ready}

        again = await events.wait_for("ready", count=2, reannounced=True, timeout=5)  # every second here
        assert {e.pod.pod for e in again} == {e.pod.pod for e in ready}
        # consumers hold pods for 3 announce intervals, as every event and listing tells them
        assert {e.lease_s for e in [*added, *ready, *again]} == {listed.lease_s} == {3.0}
    removed = await events.wait_for("removed", count=2, timeout=10)
    assert all(e.reason == "orchestrator stopping" for e in removed)


async def test_killed_engine_is_restarted_and_the_events_show_it(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    events = await PodEventLog.start(nats_bus)
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        await orch.http.put("/v1/deployments/chat", json=sim_deployment(1))
        (first,) = await events.wait_for("ready")
        (pod,) = (await orch.http.get("/v1/pods")).json()["data"]
        os.kill(pod["pid"], signal.SIGKILL)

        (removed,) = await events.wait_for("removed", pod=first.pod.pod)
        assert removed.reason.startswith("exited with code -9; restarting")
        (readded,) = await events.wait_for("added", pod=first.pod.pod, where=lambda e: e.reason != "created")
        assert readded.reason == "restart 1"
        ready_again = await events.wait_for("ready", pod=first.pod.pod, count=2)
        assert ready_again[1].reason == "ready after restart 1"
        assert [e.kind for e in events.matching(pod=first.pod.pod) if e.reason != "re-announce"] == [
            "added", "ready", "removed", "added", "ready",
        ]
        (restarted,) = (await orch.http.get("/v1/pods")).json()["data"]
        assert restarted["restarts"] == 1 and restarted["pid"] != pod["pid"] and restarted["last_exit_code"] == -9
        assert ready_again[1].pod.endpoint == first.pod.endpoint  # same pod, same address
        name = first.pod.pod
        await wait_metric(orch.http, f'brixmesh_orchestrator_pod_restarts{{deployment="chat",pod="{name}"}} 1.0')
        await wait_metric(orch.http, 'brixmesh_orchestrator_pods{deployment="chat",phase="ready"} 1.0')
        await wait_metric(orch.http, 'brixmesh_orchestrator_desired_replicas{deployment="chat"} 1.0')
        async with httpx.AsyncClient() as client:
            assert (await client.get(first.pod.endpoint + "/v1/models")).status_code == 200


async def stream_completion(endpoint: str, started: asyncio.Event) -> tuple[str | None, float]:
    """Stream 60 tokens; returns the finish reason and when the stream ended."""
    finish = None
    body = {"model": "tiny-llama", "prompt": "a long story", "max_tokens": 60, "stream": True}
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", endpoint + "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                started.set()
                if line == "data: [DONE]":
                    return finish, time.time()
                finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
    raise AssertionError("stream ended without [DONE]")


async def test_scale_decisions_start_pods_and_drain_without_failing_requests(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    events = await PodEventLog.start(nats_bus)
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        await orch.http.put("/v1/deployments/chat", json=sim_deployment(1))
        (first,) = await events.wait_for("ready")

        await decide(nats_bus, "chat", 2)
        ready = await events.wait_for("ready", count=2)
        newest = ready[1].pod

        # A long stream on the pod that scale-down will pick (the newest), then scale down under it.
        started = asyncio.Event()
        stream = asyncio.create_task(stream_completion(newest.endpoint, started))
        await asyncio.wait_for(started.wait(), 10)
        await decide(nats_bus, "chat", 1)
        (draining,) = await events.wait_for("draining", pod=newest.pod)
        assert draining.reason == "scale down"
        (removed,) = await events.wait_for("removed", pod=newest.pod, timeout=30)
        removed_seen_at = time.time()
        finish_reason, stream_ended_at = await stream
        assert finish_reason == "length"  # all 60 tokens arrived
        assert stream_ended_at <= removed_seen_at
        assert removed.reason.startswith("scale down; drained: idle after")
        assert not events.matching("draining", pod=first.pod.pod)

        # Stale and duplicate decisions change nothing.
        await decide(nats_bus, "chat", 5, ts=time.time() - 3600)
        await decide(nats_bus, "chat", 5, ts=draining.ts - 10)
        await wait_metric(orch.http, 'brixmesh_orchestrator_scale_decisions_total{outcome="stale"} 2.0')
        assert (await orch.http.get("/v1/deployments/chat")).json()["replicas"] == 1

        # Scale to zero, then back from zero.
        await decide(nats_bus, "chat", 0)
        await events.wait_for("removed", pod=first.pod.pod)
        view = (await orch.http.get("/v1/deployments/chat")).json()
        assert (view["replicas"], view["status"]["pods"], view["last_decision"]["desired_replicas"]) == (0, 0, 0)
        await decide(nats_bus, "chat", 1)
        await events.wait_for("ready", count=3)


async def wait_metric(http: httpx.AsyncClient, line: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while line not in (text := (await http.get("/metrics")).text):
        if time.monotonic() > deadline:
            raise AssertionError(f"{line!r} not in metrics:\n{text}")
        await asyncio.sleep(0.1)


async def test_http_api_rejects_bad_specs_clearly(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        http = orch.http

        async def rejected(response: httpx.Response, status: int, param: str | None, text: str) -> None:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["code"] == status and error["param"] == param and text in error["message"], error
            assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")

        await rejected(await http.put("/v1/deployments/a", json={"model": "m", "engine": "tgi"}), 400, "engine",
                       "unknown engine 'tgi'; expected one of sim, vllm, sglang")
        await rejected(await http.put("/v1/deployments/a", json={"model": "m", "replicas": -1}), 400, "replicas",
                       "replicas: Input should be greater than or equal to 0")
        await rejected(await http.put("/v1/deployments/a", json={"model": "m", "engine": "sglang"}), 400, "engine",
                       "engine 'sglang' is not installed here")
        await rejected(await http.put("/v1/deployments/a", json={"name": "b", "model": "m"}), 400, "name",
                       "name 'b' in the body differs from 'a' in the path")
        await rejected(await http.put("/v1/deployments/a", content=b"model: [m"), 400, None,
                       "not valid YAML or JSON")
        await rejected(await http.put("/v1/deployments/a", content=b""), 400, None, "the request body is empty")
        await rejected(await http.put("/v1/deployments/Bad_Name", json={"model": "m"}), 400, "name",
                       "'Bad_Name' is not a valid name")
        await rejected(await http.get("/v1/deployments/nope"), 404, None, "deployment 'nope' not found")
        await rejected(await http.patch("/v1/deployments/nope", json={"replicas": 1}), 404, None, "not found")
        await rejected(await http.delete("/v1/deployments/nope"), 404, None, "not found")

        yaml_body = b"model: tiny-llama\nreplicas: 0\nlabels: {tier: gold}\n"
        created = await http.put("/v1/deployments/a", content=yaml_body, headers={"content-type": "application/yaml"})
        assert created.status_code == 201 and created.json()["spec"]["labels"] == {"tier": "gold"}
        assert (await http.put("/v1/deployments/a", content=yaml_body)).status_code == 200
        await rejected(await http.patch("/v1/deployments/a", json={"replicas": -1}), 400, "replicas", "replicas")
        await rejected(await http.patch("/v1/deployments/a", json={"cpus_per_pod": 1}), 400, "cpus_per_pod",
                       "needs cpus")
        listed = (await http.get("/v1/deployments")).json()
        assert [d["name"] for d in listed["data"]] == ["a"] and listed["data"][0]["status"]["pods"] == 0


async def test_patch_rollout_and_delete(fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path) -> None:
    events = await PodEventLog.start(nats_bus)
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        await orch.http.put("/v1/deployments/chat", json=sim_deployment(1))
        (old,) = await events.wait_for("ready")

        # A template change replaces the pod: the new one is ready before the old one drains.
        patched = await orch.http.patch("/v1/deployments/chat", json={"engine_args": [*SLOW_SIM, "--seed", "7"]})
        assert patched.status_code == 200 and patched.json()["generation"] == 2
        (_, new) = await events.wait_for("ready", count=2)
        (old_draining,) = await events.wait_for("draining", pod=old.pod.pod)
        assert old_draining.reason == "replaced by a newer template" and new.ts <= old_draining.ts
        await events.wait_for("removed", pod=old.pod.pod)

        assert (await orch.http.patch("/v1/deployments/chat", json={"replicas": 2})).json()["replicas"] == 2
        await events.wait_for("ready", count=3)
        deleted = (await orch.http.delete("/v1/deployments/chat")).json()
        assert deleted["deleted"] and len(deleted["draining_pods"]) == 2
        removed = await events.wait_for("removed", where=lambda e: e.pod.pod in deleted["draining_pods"], count=2)
        assert all(e.reason.startswith("deployment deleted; drained") for e in removed)
        assert (await orch.http.get("/v1/deployments/chat")).status_code == 404
        assert (await orch.http.get("/v1/pods")).json()["data"] == []


async def test_external_engines_are_announced_and_probed_never_run(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    events = await PodEventLog.start(nats_bus)
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        with sim_engine() as engine:
            external = {"url": engine.base_url, "kv_events": engine.kv_events_endpoint,
                        "kv_replay": engine.kv_replay_endpoint}
            spec = {"model": "tiny-llama", "engine": "sim", "external": [external], "block_size": 32}
            assert (await orch.http.put("/v1/deployments/outside", json=spec)).status_code == 201
            (ready,) = await events.wait_for("ready")
            info = ready.pod
            assert (info.endpoint, info.kv_events_endpoint, info.kv_replay_endpoint, info.block_size) == (
                engine.base_url, engine.kv_events_endpoint, engine.kv_replay_endpoint, 32,
            )
            assert info.labels["backend"] == "external"
            (pod,) = (await orch.http.get("/v1/pods")).json()["data"]
            assert pod["external"] and pod["pid"] == 0

            await decide(nats_bus, "outside", 3)
            await wait_metric(orch.http, 'brixmesh_orchestrator_scale_decisions_total{outcome="fixed_size"} 1.0')
            rejected = await orch.http.patch("/v1/deployments/outside", json={"replicas": 2})
            assert rejected.status_code == 400 and rejected.json()["error"]["param"] == "external"

            deleted = (await orch.http.delete("/v1/deployments/outside")).json()
            (removed,) = await events.wait_for("removed", pod=deleted["draining_pods"][0])
            assert removed.reason == "deployment deleted; external engine left running"
            async with httpx.AsyncClient() as client:
                assert (await client.get(engine.base_url + "/v1/models")).status_code == 200

            assert (await orch.http.put("/v1/deployments/outside", json=spec)).status_code == 201
            (again,) = await events.wait_for("ready", where=lambda e: e.pod.pod != info.pod)
        # the engine is gone now: its pod is withdrawn
        (gone,) = await events.wait_for("removed", pod=again.pod.pod, timeout=10)
        assert gone.reason == "readiness probe failing"


async def test_deployments_file_and_default_deployment_at_start(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    spec_file = tmp_path / "deployments.yaml"
    spec_file.write_text("deployments:\n  - name: from-file\n    model: other-model\n    replicas: 1\n")
    events = await PodEventLog.start(nats_bus)
    env = {"BRIXMESH_DEPLOYMENTS_FILE": str(spec_file), "BRIXMESH_DEFAULT_ENGINES": "1"}
    async with run_orchestrator(fresh_nats_server.url, tmp_path, env=env) as orch:
        ready = await events.wait_for("ready", count=2)
        assert sorted((e.pod.deployment, e.pod.model) for e in ready) == [
            ("default", "tiny-llama"), ("from-file", "other-model"),
        ]
        names = [d["name"] for d in (await orch.http.get("/v1/deployments")).json()["data"]]
        assert names == ["from-file", "default"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIXMESH_DEPLOYMENTS_FILE": "{dir}/missing.yaml"}, "missing.yaml: cannot read: No such file"),
        ({"BRIXMESH_DEFAULT_ENGINES": "1", "BRIXMESH_DEFAULT_ENGINE": "sglang"}, "'sglang' is not installed here"),
        ({"BRIXMESH_DEFAULT_ENGINE": "tgi"}, "BRIXMESH_DEFAULT_ENGINE: Input should be 'sim', 'vllm' or 'sglang'"),
        ({"BRIXMESH_STATE_DIR": "/proc/bm"}, "cannot keep state in /proc/bm (set BRIXMESH_STATE_DIR)"),
    ],
)
def test_bad_start_configuration_exits_with_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    full_env = {**os.environ, "BRIXMESH_STATE_DIR": str(tmp_path), **{k: v.format(dir=tmp_path) for k, v in env.items()}}
    result = subprocess.run(
        [sys.executable, "-m", "brixmesh.orchestrator"], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brixmesh-orchestrator: ") and message in lines[0], lines


async def test_a_restarted_orchestrator_adopts_its_engines_and_keeps_http_deployments(
    fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path
) -> None:
    """SIGKILL (a crash) and a graceful stop without BRIXMESH_STOP_PODS_ON_EXIT both leave the engines
    serving; the next orchestrator with the same state directory lists the same pids, withdraws nothing,
    and still has the deployment applied over HTTP with its scaled replicas. Unrecorded pod processes of
    the state directory are stopped; an adopted engine that dies is restarted as a child."""
    events = await PodEventLog.start(nats_bus)
    keep = {"BRIXMESH_STOP_PODS_ON_EXIT": "0"}
    async with run_orchestrator(fresh_nats_server.url, tmp_path, env=keep) as orch:
        assert (await orch.http.put("/v1/deployments/chat", json=sim_deployment(1))).status_code == 201
        await events.wait_for("ready")
        await decide(nats_bus, "chat", 2)
        await events.wait_for("ready", count=2)
        before = {p["pod"]["pod"]: p["pid"] for p in (await orch.http.get("/v1/pods")).json()["data"]}
        orch.process.kill()  # SIGKILL: nothing runs on the way out
        orch.process.wait()
    marks = {"BRIXMESH_POD": "chat-stray", "BRIXMESH_POD_STATE_DIR": str((tmp_path / "state").resolve())}
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, **marks},
        start_new_session=True,
    )
    try:
        for _ in range(2):  # after the SIGKILL, then after a graceful stop that keeps the engines
            async with run_orchestrator(fresh_nats_server.url, tmp_path, env=keep) as orch:
                await events.wait_for("ready", count=2, where=adopted)
                pods = (await orch.http.get("/v1/pods")).json()["data"]
                assert {p["pod"]["pod"]: p["pid"] for p in pods} == before
                assert all(p["ready"] for p in pods)
                view = (await orch.http.get("/v1/deployments/chat")).json()
                decided = view["last_decision"]["desired_replicas"]
                assert (view["replicas"], view["origin"], decided) == (2, "api", 2)
                async with httpx.AsyncClient() as client:
                    for pod in pods:
                        assert (await client.get(pod["pod"]["endpoint"] + "/v1/models")).status_code == 200
                assert stray.wait(10) == -signal.SIGTERM
                events.events = [e for e in events.events if not adopted(e)]
        assert events.matching("removed") == []
        assert all(_alive(pid) for pid in before.values())
    finally:
        if stray.poll() is None:
            stray.kill()
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:  # stops its engines on exit
        await events.wait_for("ready", count=2, where=adopted)
        # an adopted engine that dies is restarted as an ordinary child, with the same identity
        victim, victim_pid = next(iter(before.items()))
        os.kill(victim_pid, signal.SIGKILL)
        (removed,) = await events.wait_for("removed", pod=victim)
        assert removed.reason == "exited (adopted: exit code unknown); restarting"
        await events.wait_for("ready", pod=victim, where=lambda e: e.reason == "ready after restart 1")
        restarted = {p["pod"]["pod"]: p["pid"] for p in (await orch.http.get("/v1/pods")).json()["data"]}
        assert restarted.keys() == before.keys() and restarted[victim] != victim_pid
    for pid in [*before.values(), restarted[victim]]:
        await wait_gone(pid)
    assert sorted(e.reason for e in events.matching("removed")) == [
        "exited (adopted: exit code unknown); restarting", "orchestrator stopping", "orchestrator stopping",
    ]


def adopted(event: PodEvent) -> bool:
    return event.reason == "adopted from an earlier orchestrator"


async def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"engine {pid} is still running"
        await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.vllm
async def test_one_real_vllm_pod_becomes_ready(fresh_nats_server: NatsServer, nats_bus: Bus, tmp_path: Path) -> None:
    events = await PodEventLog.start(nats_bus)
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        response = await orch.http.put("/v1/deployments/real", json={"model": "tiny-llama", "engine": "vllm"})
        assert response.status_code == 201, response.text
        (ready,) = await events.wait_for("ready", timeout=300)
        assert (ready.pod.engine, ready.pod.block_size) == ("vllm", 32)
        async with httpx.AsyncClient(timeout=30) as client:
            models = (await client.get(ready.pod.endpoint + "/v1/models")).json()
            assert models["data"][0]["id"] == "tiny-llama"
            completion = await client.post(
                ready.pod.endpoint + "/v1/completions", json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 4}
            )
            assert completion.status_code == 200
