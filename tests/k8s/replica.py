"""One orchestrator replica on the emulated cluster, wired as app.py wires it (Cluster: Lease, pod backend,
ModelDeployment sync; the Orchestrator's reconcile loop), without NATS: the pod events it would publish are
collected from the backend instead."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from brixmesh.common.messages import PodEvent
from brixmesh.orchestrator.controller import Orchestrator
from brixmesh.orchestrator.kubernetes.cluster import Cluster, KubernetesSettings
from tests.k8s.conftest import NAMESPACE

MD = ("brixmesh.io", "v1alpha1", NAMESPACE, "modeldeployments")


def model_deployment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "brixmesh.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"model": "tiny-llama", "engine": "sim", **spec},
    }


class Replica:
    def __init__(self, url: str, identity: str, *, lease_s: float = 2.0) -> None:
        settings = KubernetesSettings(namespace=NAMESPACE, api_url=url, lease_s=lease_s, renew_s=lease_s / 4)
        self.cluster = Cluster(settings, identity=identity)
        self.orchestrator = Orchestrator(
            self.cluster.backend, reconcile_interval_s=0.2, drain_poll_interval_s=0.05
        )
        self.cluster.attach(self.orchestrator)
        self.orchestrator.on_reconciled = self.cluster.sync.after_reconcile(_nothing)
        self.events: list[PodEvent] = []
        self.lost_at: float | None = None
        self.led_at: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def start(self) -> None:
        await self.cluster.api.open()
        self.spawn(self.cluster.lead(self._started, self.spawn, on_lost=self._on_lost), "lead")

    async def _started(self) -> None:
        self.led_at = time.monotonic()
        self.spawn(self.orchestrator.run(), "reconcile")
        self.spawn(self._collect(), "events")

    async def _collect(self) -> None:
        async for event in self.cluster.backend.changes():
            self.events.append(event)

    def _on_lost(self) -> None:
        self.lost_at = time.monotonic()

    def kinds(self, pod: str) -> list[str]:
        return [event.kind for event in self.events if event.pod.pod == pod]

    async def crash(self) -> None:
        """Stop as a killed process would: no Lease release, pods left as they are."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cluster.api.close()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.orchestrator.close(stop_pods=False)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cluster.close()


async def _nothing() -> None:
    return None
