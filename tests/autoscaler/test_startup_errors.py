"""Bad spec files stop the service at start with one line naming the file and the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _start(spec_files: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BRIXMESH_AUTOSCALER_SPECS": spec_files, "BRIXMESH_NATS_URL": "nats://127.0.0.1:1"}
    return subprocess.run([sys.executable, "-m", "brixmesh.autoscaler"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip


def test_missing_spec_file(tmp_path: Path) -> None:
    result = _start(str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "BRIXMESH_AUTOSCALER_SPECS" in result.stderr and "no such file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_invalid_spec_in_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: chat\ndeployment: chat\nstrategy: magic\n")
    result = _start(str(path))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("brixmesh-autoscaler: ") and "bad.yaml: autoscaler 'chat': strategy" in line
    assert len(line.splitlines()) == 1
