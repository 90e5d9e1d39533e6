"""``brixmesh top`` in a real terminal (a pseudo-terminal) against a running mesh: it shows the mesh's pods
with their engine metrics, the default deployment's desired vs ready, and request rates; Ctrl-C quits."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time

import httpx

from brixmesh.cli.top import FleetView
from brixmesh.common import messages as m
from tests.mesh.conftest import BRIXMESH, RunningMesh

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _screen_until(master: int, process: subprocess.Popen[bytes], wanted: list[str], timeout_s: float) -> str:
    """What the terminal received (escape codes stripped) once every ``wanted`` text is in one redraw."""
    received = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, ANSI.sub("", received.decode(errors="replace"))
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            received += os.read(master, 65536)
        last_redraw = ANSI.sub("", received.decode(errors="replace"))[-6000:]
        if all(text in last_redraw for text in wanted):
            return last_redraw
    shown = ANSI.sub("", received.decode(errors="replace"))[-3000:]
    raise AssertionError(f"{wanted} not all shown in {timeout_s}s: {shown}")


def test_top_shows_the_pods_of_a_running_mesh_in_a_terminal(mesh: RunningMesh) -> None:
    pods = re.findall(r"engine (\S+) \(sim\)", mesh.printed)
    assert len(pods) == 2
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
    process = subprocess.Popen(
        [*BRIXMESH, "top", "--state-dir", str(mesh.state_dir), "--refresh", "0.5"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "60"},
    )  # fmt: skip
    os.close(slave)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{mesh.port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            screen = ""
            while "tiny-llama" not in screen and time.monotonic() < deadline:
                assert client.post("/v1/chat/completions", json=body).status_code == 200
                screen = _screen_until(master, process, ["KV usage"], 30)
        screen = _screen_until(master, process, [*pods, "%", "default", "tiny-llama", "desired"], 60)
        row = next(line for line in screen.splitlines() if pods[0] in line)
        assert "ready" in row and "%" in row  # the pod's state and its engine metrics
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        os.close(master)


def _metrics(pod: str, kv: float) -> m.PodMetrics:
    return m.PodMetrics(pod=pod, model="tiny-llama", deployment="d", ts=0.0, stale=False, kv_usage=kv,
                        running=2, waiting=1, prefix_hit_rate=0.5)  # fmt: skip


def test_fleet_view_follows_pods_deployments_routers_and_decisions() -> None:
    view = FleetView()
    info = m.PodInfo(pod="p1", deployment="d", model="tiny-llama", engine="sim", endpoint="http://x")
    view.apply(m.PodEvent(kind="ready", pod=info, ts=0.0), now=0.0)
    view.apply(_metrics("p1", 0.25), now=0.0)
    tokens = {"prompt_tokens": 0, "completion_tokens": 0, "model": "tiny-llama", "ts": 0.0}
    view.apply(m.RouterStats(router="r1", window_s=1.0, arrivals=4, completions=4, failures=0, in_flight=1,
                             queued=0, **tokens), now=0.0)  # fmt: skip
    view.apply(m.RouterStats(router="r2", window_s=2.0, arrivals=4, completions=4, failures=2, in_flight=2,
                             queued=1, **tokens), now=5.0)  # fmt: skip
    assert view._per_model(now=6.0) == {"tiny-llama": (6.0, 3, 1, 1.0)}
    assert view._per_model(now=12.0) == {"tiny-llama": (2.0, 2, 1, 1.0)}  # r1 fell silent: left out
    for desired in (2, 3, 4, 5, 6, 7):
        decision = m.ScaleDecision(deployment="d", current_replicas=1, desired_replicas=desired,
                                   algorithm="kpa", reason="load", ts=0.0)  # fmt: skip
        view.apply(decision, now=0.0)
    assert [d.desired_replicas for d in view.decisions] == [7, 6, 5, 4, 3]
    view.apply(m.PodEvent(kind="removed", pod=info, ts=1.0), now=1.0)
    assert not view.pod_state and not view.pod_metrics
