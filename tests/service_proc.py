"""Subprocesses for tests: a ``python -m brixmesh.<service>`` on a random loopback port, ready once
``/readyz`` answers 200 (waited for without blocking the test's event loop, which may be answering the
service's requests meanwhile), stopped with its whole process group.

    async with service_process("brixmesh.autoscaler", nats_url, tmp_path / "as.log", settings) as svc:
        httpx.get(f"{svc.url}/metrics")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from brixmesh.common.admin import bearer_header
from brixmesh.common.ports import free_port

TEST_ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN_HEADERS = bearer_header(TEST_ADMIN_TOKEN)
"""What tests send on admin routes of services started here (they all get ``TEST_ADMIN_TOKEN``)."""


@dataclass(frozen=True)
class ServiceProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def stop_process_group(
    process: subprocess.Popen[bytes], grace_s: float = 10.0, *, term_group: bool = True
) -> None:
    """SIGTERM (the group, or only the leader where it stops its own children in order), SIGKILL the group
    after ``grace_s``."""
    if process.poll() is not None:
        return
    if term_group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def consecutive_free_ports(count: int) -> int:
    """First of ``count`` consecutive free loopback ports (a simulator's replica i replays on port + i)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            if base + count > 65535:
                continue
            try:
                with contextlib.ExitStack() as stack:
                    for port in range(base + 1, base + count):
                        sock = stack.enter_context(socket.socket())
                        sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


@contextlib.asynccontextmanager
async def service_process(
    module: str,
    nats_url: str,
    log_path: Path,
    settings: Mapping[str, str] | None = None,
    *,
    startup_timeout_s: float = 20.0,
    stop_grace_s: float = 10.0,
    term_group: bool = True,
) -> AsyncIterator[ServiceProcess]:
    """``settings`` are ``BRIXMESH_*`` environment variables on top of the NATS URL, port, text logs and the
    test admin token."""
    port = free_port()
    env = {
        **os.environ,
        "BRIXMESH_NATS_URL": nats_url,
        "BRIXMESH_PORT": str(port),
        "BRIXMESH_LOG_FORMAT": "text",
        "BRIXMESH_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        **(settings or {}),
    }
    process = await asyncio.to_thread(_spawn, [sys.executable, "-m", module], env, log_path)
    service = ServiceProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        await _wait_ready(service, module, startup_timeout_s)
        yield service
    finally:
        await asyncio.to_thread(stop_process_group, service.process, stop_grace_s, term_group=term_group)


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """In its own session, so that its children stop with it; output into ``log_path``."""
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip


async def _wait_ready(service: ServiceProcess, module: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while True:
            if service.process.poll() is not None:
                raise RuntimeError(f"{module} exited {service.process.returncode}: {service.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{service.url}/readyz", timeout=1)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{module} not ready after {timeout_s}s: {service.log_tail()}")
            await asyncio.sleep(0.05)
