"""A real ``brixmesh up`` for the mesh tests (the default: two simulated engines; ``indirect`` params add
flags)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from brixmesh.common.ports import free_port

BRIXMESH = [sys.executable, "-m", "brixmesh.cli.main"]


@dataclass
class RunningMesh:
    process: subprocess.Popen[str]
    state_dir: Path
    port: int
    printed: str

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BRIXMESH, *args, "--state-dir", str(self.state_dir)], capture_output=True,
                              text=True, timeout=timeout)

    def status(self) -> list[dict]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def _wait_for_text(process: subprocess.Popen[str], log: Path, needle: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return text
        if process.poll() is not None:
            raise AssertionError(f"brixmesh up exited with {process.returncode}: {text}")
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not printed within {timeout_s}s: {log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_mesh(
    tmp_path: Path, extra: Sequence[str], start_timeout_s: float = 180, env: Mapping[str, str] | None = None
) -> Iterator[RunningMesh]:
    """``brixmesh up`` with ``extra`` flags (and ``env`` over the environment), once it has printed its
    endpoint; SIGINT (a clean stop) after."""
    port = free_port()
    state_dir = tmp_path / "state"
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*BRIXMESH, "up", "--port", str(port), "--state-dir", str(state_dir), *extra],
            stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "BRIXMESH_HEARTBEAT_INTERVAL_S": "0.5", **(env or {})},
        )
    try:
        printed = _wait_for_text(process, log, "OpenAI endpoint", start_timeout_s)
        yield RunningMesh(process, state_dir, port, printed)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise


@pytest.fixture
def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningMesh]:
    with running_mesh(tmp_path, getattr(request, "param", [])) as running:
        yield running
