"""Runs ``brixmesh-orchestrator`` as a subprocess for tests, and records the pod events it publishes.

    async with run_orchestrator(nats.url, tmp_path) as orch:      # orch.url: its HTTP API
        events = await PodEventLog.start(bus)
        await orch.http.put("/v1/deployments/chat", json={...})
        ready = await events.wait_for(kind="ready", count=2)
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent
from brixmesh.common.subjects import PODS
from brixmesh.orchestrator.local_backend import find_pod_leaders, stop_groups

from tests.service_proc import ADMIN_HEADERS, service_process


@dataclass
class OrchestratorProcess:
    url: str
    process: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def run_orchestrator(
    nats_url: str, work_dir: Path, env: Mapping[str, str] | None = None, startup_timeout: float = 30.0
) -> AsyncIterator[OrchestratorProcess]:
    state_dir = work_dir / "state"
    settings = {
        "BRIXMESH_STATE_DIR": str(state_dir),
        "BRIXMESH_ANNOUNCE_INTERVAL_S": "1",
        "BRIXMESH_RECONCILE_INTERVAL_S": "0.5",
        "BRIXMESH_DRAIN_POLL_INTERVAL_S": "0.1",
        "BRIXMESH_STOP_PODS_ON_EXIT": "1",  # tests leave nothing behind unless they ask to
        **(env or {}),
    }
    # SIGTERM to the orchestrator alone: it stops its engines itself (engines live in their own sessions)
    stops_engines = settings["BRIXMESH_STOP_PODS_ON_EXIT"] == "1"
    completed = False
    try:
        async with (
            service_process(
                "brixmesh.orchestrator", nats_url, work_dir / "orchestrator.log", settings,
                startup_timeout_s=startup_timeout, stop_grace_s=20.0, term_group=False,
            ) as service,
            httpx.AsyncClient(base_url=service.url, timeout=10, headers=ADMIN_HEADERS) as http,
        ):  # fmt: skip
            yield OrchestratorProcess(service.url, service.process, state_dir, service.log_path, http)
        completed = True
    finally:
        # engines a test kept running for the next orchestrator are its business, unless it failed
        left = {}
        if stops_engines or not completed:
            left = await asyncio.to_thread(find_pod_leaders, state_dir.resolve())
            await asyncio.to_thread(stop_groups, list(left.values()))
    assert not (stops_engines and left), f"the orchestrator left engines running: {left}"


class PodEventLog:
    """Every pod event seen on the bus, in arrival order, with waiting helpers."""

    def __init__(self) -> None:
        self.events: list[PodEvent] = []
        self._changed = asyncio.Event()

    @classmethod
    async def start(cls, bus: Bus) -> PodEventLog:
        log = cls()
        await bus.subscribe(PODS.pattern(), PodEvent, log._on_event)
        await bus.client.flush()
        return log

    def _on_event(self, _subject: str, event: PodEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def matching(
        self, kind: str | None = None, pod: str | None = None, where: Callable[[PodEvent], bool] | None = None
    ) -> list[PodEvent]:
        return [
            e for e in self.events
            if (kind is None or e.kind == kind) and (pod is None or e.pod.pod == pod) and (where is None or where(e))
        ]

    async def wait_for(
        self, kind: str | None = None, *, pod: str | None = None, count: int = 1,
        where: Callable[[PodEvent], bool] | None = None, timeout: float = 30.0, reannounced: bool = False,
    ) -> list[PodEvent]:
        """The first ``count`` matching events once that many have arrived: lifecycle changes, or with
        ``reannounced`` only the periodic re-announcements."""
        def fresh(e: PodEvent) -> bool:
            return (e.reason == "re-announce") == reannounced and (where is None or where(e))

        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(kind, pod, fresh)
            if len(found) >= count:
                return found[:count]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(e.kind, e.pod.pod, e.reason) for e in self.events if e.reason != "re-announce"]
                raise AssertionError(f"waited {timeout}s for {count} {kind or 'any'} event(s) of {pod}; seen {seen}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
