"""Runs real router processes (``python -m brixmesh.router``) on random loopback ports for tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from brixmesh.common.ports import free_port

MODEL = "tiny-llama"


@dataclass(frozen=True)
class RouterProcess:
    url: str
    pid: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def endpoints_file(
    directory: Path,
    urls: Sequence[str],
    names: Sequence[str] | None = None,
    adapters: Sequence[str] = ("lora-a",),
) -> Path:
    path = directory / f"endpoints-{free_port()}.json"
    names = names or [f"pod-{i}" for i in range(len(urls))]
    path.write_text(
        json.dumps(
            {
                "endpoints": [
                    {"name": name, "url": url, "model": MODEL, "adapters": list(adapters)}
                    for name, url in zip(names, urls)
                ]
            }
        )
    )
    return path


@contextlib.contextmanager
def router_process(
    nats_url: str, *, endpoints: Path | None = None, timeout_s: float = 20.0, **settings: object
) -> Iterator[RouterProcess]:
    """Start a router; ``settings`` become ``BRIXMESH_<NAME>`` (lists/dicts as JSON)."""
    port = free_port()
    env = {
        **os.environ,
        "BRIXMESH_NATS_URL": nats_url,
        "BRIXMESH_PORT": str(port),
        "BRIXMESH_LOG_FORMAT": "text",
        "BRIXMESH_HOST": "127.0.0.1",
    }
    if endpoints is not None:
        env["BRIXMESH_ENDPOINTS_FILE"] = str(endpoints)
    for name, value in settings.items():
        env[f"BRIXMESH_{name.upper()}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    log_path = Path(tempfile.mkstemp(prefix="bm-router-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "brixmesh.router"],
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"router exited {process.returncode}: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"router not ready: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        yield RouterProcess(url, process.pid, log_path)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log_path.unlink(missing_ok=True)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total
