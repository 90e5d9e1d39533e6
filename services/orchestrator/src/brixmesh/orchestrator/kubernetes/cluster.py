"""The orchestrator on a cluster (``BRIXMESH_BACKEND=kubernetes``): settings, and the order things start in.

Every replica of the orchestrator is a candidate for the Lease; only its holder acts. On winning it lists the
pods (adopting those an earlier leader made), then the ModelDeployments, and only then starts reconciling, so
a pod is never taken for an orphan of a deployment not yet read. A leader that loses the Lease stops the
process (Kubernetes restarts it as a candidate): two leaders never act at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from brixmesh.common.kube.api import Api, resolved_namespace

from brixmesh.orchestrator.controller import Orchestrator
from brixmesh.orchestrator.kubernetes.backend import KubernetesBackend
from brixmesh.orchestrator.kubernetes.controller import ModelDeploymentSync
from brixmesh.orchestrator.kubernetes.leader import LeaseElection
from brixmesh.orchestrator.kubernetes.objects import Images

log = logging.getLogger(__name__)


class KubernetesSettings(BaseSettings):
    """``BRIXMESH_K8S_*``: where and how the Kubernetes backend runs engine pods."""

    model_config = SettingsConfigDict(env_prefix="BRIXMESH_K8S_", extra="ignore")

    namespace: str = ""
    """Namespace of the ModelDeployments and their pods; default: the orchestrator pod's own."""
    api_url: str = ""
    """API server URL; default: the service account in a pod, else the kubeconfig."""
    sim_image: str = "brixmesh/engine-sim:0.1.0"
    vllm_image: str = "vllm/vllm-openai:v0.32.0"
    sglang_image: str = "lmsysorg/sglang:v0.5.6"
    lease_name: str = "brixmesh-orchestrator"
    lease_s: float = Field(default=15.0, gt=0)
    """A standby takes over at most about this long after the leader stopped renewing."""
    renew_s: float = Field(default=2.0, gt=0)
    """How often the leader renews the Lease and a standby tries to take it (at most ``lease_s / 3``)."""
    max_accelerators_per_pod: int = Field(default=8, ge=0)
    """A ModelDeployment asking for more accelerators per pod than a node has is refused."""

    def resolved_namespace(self) -> str:
        return resolved_namespace(self.namespace)


class Cluster:
    """The Kubernetes pieces of one orchestrator replica."""

    def __init__(self, settings: KubernetesSettings, *, identity: str) -> None:
        self.settings = settings
        self.namespace = settings.resolved_namespace()
        self.api = Api(settings.api_url)
        images = Images(sim=settings.sim_image, vllm=settings.vllm_image, sglang=settings.sglang_image)
        self.backend = KubernetesBackend(
            self.api, self.namespace, images=images,
            max_accelerators_per_pod=settings.max_accelerators_per_pod,
        )  # fmt: skip
        self.election = LeaseElection(
            self.api, self.namespace, settings.lease_name, identity,
            lease_s=settings.lease_s, renew_s=settings.renew_s,
        )  # fmt: skip
        self._sync: ModelDeploymentSync | None = None
        self.leading = False
        self._writes: set[asyncio.Task[None]] = set()

    def attach(self, orchestrator: Orchestrator) -> None:
        self._sync = ModelDeploymentSync(self.api, self.namespace, orchestrator, self.backend)

    @property
    def sync(self) -> ModelDeploymentSync:
        if self._sync is None:
            raise RuntimeError("attach() an orchestrator first")
        return self._sync

    async def lead(
        self,
        start: Callable[[], Awaitable[None]],
        spawn: Callable[..., asyncio.Task[None]],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """Wait for the Lease; then adopt pods, read the ModelDeployments, ``start`` the orchestrator and hold
        the Lease. ``on_lost`` (default: SIGTERM to this process) when it is lost."""
        await self.election.acquire()
        self.leading = True
        loop = asyncio.get_running_loop()
        # renewing from the start: adopting pods and reading the resources may take longer than the lease
        holding = loop.create_task(self.election.hold(), name="lease-renewal")
        starting = loop.create_task(self._take_over(start, spawn), name="take-over")
        try:
            await asyncio.wait({holding, starting}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a failed take-over ends the process (spawn's rule)
                await holding
        finally:
            starting.cancel()
            holding.cancel()
        self.leading = False
        (on_lost or _terminate)()

    async def _take_over(
        self, start: Callable[[], Awaitable[None]], spawn: Callable[..., asyncio.Task[None]]
    ) -> None:
        await self.backend.recover()
        spawn(self.sync.run(), "watch-modeldeployments")
        await self.sync.wait_listed()
        await start()

    def persist_replicas(self, deployment: str) -> None:
        """Make an accepted scale decision durable in the ModelDeployment (in the background)."""
        if self.leading:
            task = asyncio.get_running_loop().create_task(
                self._persist(deployment), name=f"scale:{deployment}"
            )
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _persist(self, deployment: str) -> None:
        try:
            await self.sync.persist_replicas(deployment)
        except Exception:  # the decision stays applied in memory; the autoscaler re-sends it
            log.exception("writing the replicas of %s back to its ModelDeployment failed", deployment)

    async def close(self) -> None:
        if self.leading:
            await self.election.release()
        await self.api.close()


def _terminate() -> None:
    log.error("no longer leading: stopping so that Kubernetes restarts this replica as a standby")
    os.kill(os.getpid(), signal.SIGTERM)
