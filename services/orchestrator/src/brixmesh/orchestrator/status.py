"""``deployments.status.{deployment}``: the fleet the orchestrator observes, per deployment.

Published after a reconcile pass for every deployment whose status changed (so a scale decision is
acknowledged within one pass), and for all of them every announce interval (so a consumer that missed one,
or started late, converges). A deleted deployment is published once with ``deleted``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from brixmesh.common.bus import Bus
from brixmesh.common.messages import DeploymentStatus
from brixmesh.common.subjects import DEPLOYMENTS_STATUS

from brixmesh.orchestrator.controller import Deployment, Orchestrator

log = logging.getLogger(__name__)


def deployment_status(
    orchestrator: Orchestrator, deployment: Deployment, instance_id: str
) -> DeploymentStatus:
    active = [pod for pod in orchestrator.backend.list_pods(deployment.name) if not pod.draining]
    decision = deployment.last_decision
    return DeploymentStatus(
        deployment=deployment.name,
        role=deployment.spec.role,
        generation=deployment.generation,
        desired_replicas=deployment.replicas,
        ready_replicas=sum(pod.ready for pod in active),
        pods=len(active),
        fixed_size=deployment.spec.is_external,
        last_decision_ts=decision.ts if decision is not None else 0.0,
        orchestrator=instance_id,
        ts=time.time(),
    )


class StatusPublisher:
    def __init__(self, bus: Bus, orchestrator: Orchestrator, *, instance_id: str) -> None:
        self._bus = bus
        self._orchestrator = orchestrator
        self._instance_id = instance_id
        self._published: dict[str, DeploymentStatus] = {}

    async def publish_changes(self) -> None:
        """After a reconcile pass."""
        await self._publish(everything=False)

    async def publish_forever(self, interval_s: float) -> None:
        while True:
            await self._publish(everything=True)
            await asyncio.sleep(interval_s)

    async def _publish(self, *, everything: bool) -> None:
        """A failure (NATS away long enough to fill the reconnect buffer) stops neither the reconcile loop
        nor this publisher: the next periodic publication catches up."""
        try:
            await self._publish_statuses(everything=everything)
        except nats.errors.Error as exc:
            log.warning("deployment status not published: %s", exc)

    async def _publish_statuses(self, *, everything: bool) -> None:
        current = {
            name: deployment_status(self._orchestrator, deployment, self._instance_id)
            for name, deployment in list(self._orchestrator.deployments.items())
        }
        for name in self._published.keys() - current.keys():
            gone = self._published.pop(name)
            gone.deleted, gone.ts = True, time.time()
            await self._bus.publish(DEPLOYMENTS_STATUS.format(deployment=name), gone)
        for name, status in current.items():
            if everything or _changed(self._published.get(name), status):
                await self._bus.publish(DEPLOYMENTS_STATUS.format(deployment=name), status)
                self._published[name] = status


def _changed(old: DeploymentStatus | None, new: DeploymentStatus) -> bool:
    return old is None or (old.generation, old.desired_replicas, old.ready_replicas, old.pods,
                           old.last_decision_ts) != (new.generation, new.desired_replicas, new.ready_replicas,
                                                     new.pods, new.last_decision_ts)  # fmt: skip
