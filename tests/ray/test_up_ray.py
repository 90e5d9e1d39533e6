"""``brixmesh up --backend ray``: the orchestrator starts a local Ray cluster on loopback, the default
deployment's engine runs in it and serves through the router, and stopping the mesh leaves no process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.mesh.conftest import RunningMesh, mesh  # noqa: F401  (the fixture)
from tests.ray.conftest import wait_gone


def processes_with_env(entry: str) -> dict[int, str]:
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if entry.encode() in environ and state != "Z":
            found[int(proc.name)] = cmdline[:160]
    return found


def listening_addresses(pids: set[int]) -> dict[str, int]:
    """Every TCP listening address (``ip:port``, IPv6 ones as Linux writes them) of these processes."""
    sockets: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in (Path("/proc") / str(pid) / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    sockets[target[8:-1]] = pid
        except OSError:
            continue
    listening = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in sockets:
                listening[local] = sockets[inode]
    return listening


def is_loopback(address: str) -> bool:
    ip = address.split(":")[0]
    # /proc/net/tcp: 127.0.0.1 is 0100007F; tcp6: ::ffff:127.0.0.1 is 0000000000000000FFFF00000100007F
    return ip == "0100007F" or ip == "0000000000000000FFFF00000100007F"


@pytest.mark.parametrize("mesh", [["--backend", "ray", "--engines", "1"]], indirect=True)
def test_up_with_a_local_ray_cluster_serves_and_leaves_nothing(mesh: RunningMesh) -> None:  # noqa: F811
    marker = f"BRIXMESH_STATE_DIR={mesh.state_dir.resolve()}"
    processes = processes_with_env(marker)
    assert any("raylet" in cmd for cmd in processes.values()), "the orchestrator started a Ray node"
    (engine,) = [pid for pid, cmd in processes.items() if "brixmesh.engine_sim" in cmd]
    parent = int((Path("/proc") / str(engine) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    assert "ray::GroupMember" in (Path("/proc") / str(parent) / "cmdline").read_text(errors="replace")
    answer = httpx.post(f"http://127.0.0.1:{mesh.port}/v1/completions", timeout=30,
                        json={"model": "tiny-llama", "prompt": "hello", "max_tokens": 3})
    assert answer.status_code == 200, answer.text
    # Ray's own processes (GCS, raylet, agents, workers), the engine and every service: loopback only
    listening = listening_addresses(set(processes))
    assert f"0100007F:{mesh.port:04X}" in listening, "the router's port is seen"
    assert sum("raylet" in processes[pid] or "gcs_server" in processes[pid] for pid in listening.values()) >= 2
    exposed = {address: processes[pid] for address, pid in listening.items() if not is_loopback(address)}
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"

    mesh.process.send_signal(signal.SIGINT)
    mesh.process.wait(60)
    left = wait_gone(lambda: processes_with_env(marker), timeout_s=30)
    assert not left, f"left running after the mesh stopped: {left}"
