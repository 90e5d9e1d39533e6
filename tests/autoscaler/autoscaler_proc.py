"""Runs ``python -m brixmesh.autoscaler`` as a subprocess for tests, on a random loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
from brixmesh.common.ports import free_port


def _spawn(env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "brixmesh.autoscaler"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.asynccontextmanager
async def autoscaler_process(
    nats_url: str, spec_file: Path, log_path: Path, **settings: str
) -> AsyncIterator[str]:
    """Yields the service's base URL once ``/readyz`` answers 200; waits without blocking the test's event
    loop, which may be answering the service's requests (``pods.list``) meanwhile."""
    port = free_port()
    env = {
        **os.environ,
        "BRIXMESH_NATS_URL": nats_url,
        "BRIXMESH_PORT": str(port),
        "BRIXMESH_LOG_FORMAT": "text",
        "BRIXMESH_AUTOSCALER_SPECS": str(spec_file),
        **{f"BRIXMESH_{k.upper()}": v for k, v in settings.items()},
    }
    process = _spawn(env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"autoscaler exited {process.returncode}: {log_path.read_text()[-2000:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/readyz", timeout=1)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"autoscaler not ready: {log_path.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
        yield url
    finally:
        await asyncio.to_thread(_stop, process)
