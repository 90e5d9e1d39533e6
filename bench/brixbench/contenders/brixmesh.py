"""brixmesh's router as a user runs it: NATS, the kv-index bridge and the router process, the fleet's pods
announced the way the orchestrator announces them (``pods.list`` answers and ``pods.ready.*`` events).

The mesh (NATS + announcer + kv-index) is started once and shared by every brixmesh contender; the router
process is restarted per contender with its strategy as ``BRIXMESH_DEFAULT_STRATEGY``, so its state and CPU
count belong to that strategy alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodInfo, PodList, PodListRequest, PodStatus
from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS, PODS_LIST

from brixbench.client import FixedTarget, Target
from brixbench.contenders.base import ContenderError, RouterProcess
from brixbench.fleet import TOKENIZER_DIR, Fleet

DEPLOYMENT = "bench"


def pod_infos(fleet: Fleet) -> list[PodInfo]:
    return [
        PodInfo(pod=f"engine-{i}", deployment=DEPLOYMENT, model=fleet.spec.model, engine=fleet.spec.engine,
                endpoint=url, metrics_url=f"{url}/metrics", kv_events_endpoint=fleet.kv_endpoints[i],
                kv_replay_endpoint=fleet.kv_replay_endpoints[i], kv_events_topic="",
                block_size=fleet.spec.block_size)
        for i, url in enumerate(fleet.urls)
    ]


class BenchMesh:
    """NATS, a stand-in orchestrator that lists the fleet's pods, the kv-index bridge and, with
    ``scrape_metrics``, the autoscaler (its ``metrics.pods.*`` scrapes feed ``least-kv-cache``)."""

    def __init__(self, fleet: Fleet, workdir: Path, scrape_metrics: bool = False) -> None:
        self.fleet = fleet
        self.workdir = workdir
        self.scrape_metrics = scrape_metrics
        self.nats: NatsServer | None = None
        self.bus: Bus | None = None
        self.helpers: list[RouterProcess] = []
        self.pods = pod_infos(fleet)

    @property
    def nats_url(self) -> str:
        assert self.nats is not None
        return self.nats.url

    def _listing(self, _subject: str, _request: PodListRequest) -> PodList:
        now = time.time()
        return PodList(pods=[PodStatus(pod=pod, phase="ready", ready=True, created_at=now, phase_since=now)
                             for pod in self.pods], ts=now, orchestrator="brixbench")

    async def start(self) -> BenchMesh:
        self.nats = NatsServer(self.workdir / "nats").start()
        self.bus = await Bus.connect(self.nats.url, name="brixbench")
        await self.bus.serve(PODS_LIST.template, PodListRequest, self._listing)
        services = ["kv_index", "autoscaler"] if self.scrape_metrics else ["kv_index"]
        for module in services:
            port = free_port()
            helper = RouterProcess(
                module.replace("_", "-"), [sys.executable, "-m", f"brixmesh.{module}"],
                f"http://127.0.0.1:{port}/readyz", self.workdir,
                env={"BRIXMESH_NATS_URL": self.nats.url, "BRIXMESH_PORT": str(port), "BRIXMESH_LOG_LEVEL": "warning"})
            self.helpers.append(helper)
            await helper.start()
        await self.announce()
        return self

    async def announce(self) -> None:
        """``pods.ready.*`` for every engine (the kv-index follows pods from these events too)."""
        assert self.bus is not None
        for pod in self.pods:
            await self.bus.publish(PODS.format(kind="ready", deployment=DEPLOYMENT, pod=pod.pod),
                                   PodEvent(kind="ready", pod=pod, ts=time.time()))
        await self.bus.client.flush()

    @property
    def helper_pids(self) -> list[int]:
        return [helper.pid for helper in self.helpers if helper.pid is not None]

    async def stop(self) -> None:
        for helper in self.helpers:
            await helper.stop()
        if self.bus is not None:
            self.bus.closing = True
            await self.bus.client.close()
        if self.nats is not None:
            self.nats.stop()


class BrixmeshRouter:
    """``python -m brixmesh.router`` with one strategy (e.g. ``kv-aware:3,least-request:2``) and, optionally,
    router settings (``{"BRIXMESH_LEAD_GAIN": "0"}``), shown in its name."""

    def __init__(
        self, strategy: str, mesh_provider: MeshProvider, settings: dict[str, str] | None = None
    ) -> None:
        self.strategy = strategy
        self.settings = dict(settings or {})
        shown = (f"{key}={value}" for key, value in self.settings.items())
        self.name = " ".join([f"brixmesh {strategy}", *shown])
        self._mesh_provider = mesh_provider
        self._router: RouterProcess | None = None

    def unavailable(self) -> str | None:
        return None

    @property
    def pid(self) -> int | None:
        return self._router.pid if self._router else None

    async def start(self, fleet: Fleet, workdir: Path) -> Target:
        mesh = await self._mesh_provider.get(fleet, workdir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        async def routes_to_all(session: aiohttp.ClientSession) -> bool:
            async with session.get(f"{url}/v1/models") as response:
                if response.status == 404:
                    raise ContenderError("the router serves no /v1/models")
                if response.status != 200:
                    return False
                listed: Any = await response.json(content_type=None)
            return any(card.get("id") == fleet.spec.model for card in listed.get("data", []))

        env = {"BRIXMESH_NATS_URL": mesh.nats_url, "BRIXMESH_PORT": str(port),
               "BRIXMESH_DEFAULT_STRATEGY": self.strategy, "BRIXMESH_LOG_LEVEL": "warning",
               "BRIXMESH_KV_TOKENIZER_DIRS": f'{{"{fleet.spec.model}": "{TOKENIZER_DIR}"}}', **self.settings}
        label = "".join(char if char.isalnum() or char in "-_" else "-" for char in self.name)
        self._router = RouterProcess(f"router-{label}",
                                     [sys.executable, "-m", "brixmesh.router"], f"{url}/readyz", workdir,
                                     env=env, ready_check=routes_to_all)
        await self._router.start()
        return FixedTarget(url)

    async def stop(self) -> None:
        if self._router is not None:
            await self._router.stop()


class MeshProvider:
    """Starts the shared :class:`BenchMesh` on first use; the runner stops it at the end."""

    def __init__(self, scrape_metrics: bool = False) -> None:
        self.scrape_metrics = scrape_metrics
        self.mesh: BenchMesh | None = None

    async def get(self, fleet: Fleet, workdir: Path) -> BenchMesh:
        if self.mesh is None:
            self.mesh = await BenchMesh(fleet, workdir / "mesh", self.scrape_metrics).start()
        return self.mesh

    async def stop(self) -> None:
        if self.mesh is not None:
            await self.mesh.stop()
            self.mesh = None
