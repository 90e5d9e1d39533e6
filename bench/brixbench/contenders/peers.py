"""The peers, as their users would run them: SGLang Model Gateway (``smg``) and ``vllm-router``.

They live in their own virtual environment (``install_peers`` makes it; the router engineer's overhead
bench uses the same pins). Thresholds are passed explicitly: the Rust defaults differ from the documented
Python ones.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import aiohttp
import router_overhead  # bench/router_overhead.py: owns the peers' pins and their venv
import zmq
from brixmesh.common.ports import free_port

from brixbench.client import FixedTarget, Target
from brixbench.contenders.base import RouterProcess
from brixbench.fleet import Fleet

PEERS_VENV_ENV = "BRIXMESH_PEERS_VENV"


def peers_venv() -> Path:
    """``$BRIXMESH_PEERS_VENV``, else the router overhead bench's ``.brixmesh/peers-venv`` (one install)."""
    configured = os.environ.get(PEERS_VENV_ENV)
    return Path(configured) if configured else router_overhead.PEERS_VENV


def peer_binary(name: str) -> Path | None:
    path = peers_venv() / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def install_peers() -> bool:
    """The router overhead bench's installer (pinned ``sglang-router`` and ``vllm-router`` in their own venv)."""
    return router_overhead.ensure_peers()


class _PeerRouter:
    """What both peers share: their binary in the peers venv, one router process, its pid for CPU sampling."""

    binary: str

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.name = f"{self.binary} {policy}"
        self._router: RouterProcess | None = None

    def unavailable(self) -> str | None:
        if peer_binary(self.binary) is None:
            return f"{self.binary} not installed in {peers_venv()} (brixmesh bench install-peers)"
        return None

    @property
    def pid(self) -> int | None:
        return self._router.pid if self._router else None

    async def stop(self) -> None:
        if self._router is not None:
            await self._router.stop()


class Smg(_PeerRouter):
    """``smg launch --policy cache_aware`` with the documented thresholds (0.3 / 64 / 1.5, 60 s, 2^26)."""

    binary = "smg"

    def __init__(self, policy: str = "cache_aware") -> None:
        super().__init__(policy)

    async def start(self, fleet: Fleet, workdir: Path) -> Target:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [str(peer_binary("smg")), "launch", "--host", "127.0.0.1", "--port", str(port),
                "--worker-urls", *fleet.urls, "--policy", self.policy,
                "--cache-threshold", "0.3", "--balance-abs-threshold", "64", "--balance-rel-threshold", "1.5",
                "--eviction-interval-secs", "60", "--max-tree-size", str(2**26),
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
                "--log-level", "warn"]
        count = len(fleet.urls)

        async def all_workers(session: aiohttp.ClientSession) -> bool:
            try:
                async with session.get(f"{url}/workers") as response:
                    if response.status != 200:
                        return False
                    listed: Any = await response.json(content_type=None)
            except (aiohttp.ClientError, ValueError):
                return False
            workers = listed.get("workers", listed) if isinstance(listed, dict) else listed
            return isinstance(workers, list) and len(workers) >= count

        self._router = RouterProcess("smg", argv, f"{url}/health", workdir, ready_check=all_workers)
        await self._router.start()
        return FixedTarget(url)


class KvEventRelay:
    """Re-publishes each engine's ipc:// KV events on a loopback TCP port (vllm-router accepts only
    ``tcp://`` sources). One steerable zmq proxy thread per engine: the copy happens in libzmq, not in
    Python, and ``stop`` terminates the proxies through their control sockets."""

    def __init__(self, sources: list[str]) -> None:
        self.sources = sources
        self.endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in sources]
        self._context = zmq.Context.instance()
        self._threads: list[threading.Thread] = []
        self._controls: list[zmq.Socket] = []

    def start(self) -> KvEventRelay:
        for index, (source, endpoint) in enumerate(zip(self.sources, self.endpoints, strict=True)):
            control_endpoint = f"inproc://kv-relay-{id(self)}-{index}"
            control = self._context.socket(zmq.PAIR)
            control.bind(control_endpoint)
            bound = threading.Event()
            thread = threading.Thread(target=self._proxy, args=(source, endpoint, control_endpoint, bound),
                                      daemon=True, name=f"kv-relay-{index}")
            thread.start()
            bound.wait(5)
            self._controls.append(control)
            self._threads.append(thread)
        return self

    def _proxy(self, source: str, endpoint: str, control_endpoint: str, bound: threading.Event) -> None:
        xsub = self._context.socket(zmq.XSUB)
        xpub = self._context.socket(zmq.XPUB)
        control = self._context.socket(zmq.PAIR)
        try:
            xsub.connect(source)
            xpub.bind(endpoint)
            control.connect(control_endpoint)
            bound.set()
            zmq.proxy_steerable(xsub, xpub, None, control)
        finally:
            bound.set()
            for sock in (xsub, xpub, control):
                sock.close(linger=0)

    def stop(self) -> None:
        for control in self._controls:
            control.send(b"TERMINATE")
        for thread in self._threads:
            thread.join(5)
        for control in self._controls:
            control.close(linger=0)
        self._controls.clear()
        self._threads.clear()


class VllmRouter(_PeerRouter):
    """``vllm-router`` with ``cache_aware`` (0.3 / 64 / 1.5, eviction 120 s) or ``kv_aware`` (engine events)."""

    binary = "vllm-router"

    def __init__(self, policy: str = "cache_aware") -> None:
        super().__init__(policy)
        self._relay: KvEventRelay | None = None

    async def start(self, fleet: Fleet, workdir: Path) -> Target:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [str(peer_binary("vllm-router")), "--host", "127.0.0.1", "--port", str(port),
                "--worker-urls", *fleet.urls, "--policy", self.policy,
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
                "--log-level", "warning"]
        if self.policy == "cache_aware":
            argv += ["--cache-threshold", "0.3", "--balance-abs-threshold", "64", "--balance-rel-threshold",
                     "1.5", "--eviction-interval-secs", "120", "--max-tree-size", str(2**25)]
        if self.policy == "kv_aware":
            self._relay = KvEventRelay(fleet.kv_endpoints).start()
            argv += ["--kv-event-model", fleet.spec.model, "--kv-event-block-size", str(fleet.spec.block_size)]
            for worker, endpoint in zip(fleet.urls, self._relay.endpoints, strict=True):
                argv += ["--kv-event-source", f"{worker}={endpoint}"]
        count = len(fleet.urls)

        async def all_workers(session: aiohttp.ClientSession) -> bool:
            try:
                async with session.get(f"{url}/list_workers") as response:
                    if response.status != 200:
                        return False
                    listed: Any = await response.json(content_type=None)
            except (aiohttp.ClientError, ValueError):
                return False
            workers = listed.get("urls", listed.get("workers", [])) if isinstance(listed, dict) else listed
            return isinstance(workers, list) and len(workers) >= count

        self._router = RouterProcess(f"vllm-router-{self.policy}", argv, f"{url}/health", workdir,
                                     ready_check=all_workers)
        await self._router.start()
        return FixedTarget(url)

    async def stop(self) -> None:
        await super().stop()
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
