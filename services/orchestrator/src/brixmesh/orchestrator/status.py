"""``deployments.status.{deployment}``: the fleet the orchestrator observes, per deployment.

Published after a reconcile pass for every deployment whose status changed (so a scale decision is
acknowledged within one pass), and for all of them every announce interval (so a consumer that missed one,
or started late, converges). A deleted deployment is published once with ``deleted``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats.errors
from brixmesh.common.bus import Bus
from brixmesh.common.messages import DeploymentStatus, RoleSetStatus, RoleStatus
from brixmesh.common.subjects import DEPLOYMENTS_STATUS

from brixmesh.orchestrator.backend import Pod
from brixmesh.orchestrator.controller import Deployment, Orchestrator
from brixmesh.orchestrator.role_planner import role_set_states
from brixmesh.orchestrator.spec import role_set_name

log = logging.getLogger(__name__)


def deployment_status(
    orchestrator: Orchestrator, deployment: Deployment, instance_id: str
) -> DeploymentStatus:
    pods = orchestrator.backend.list_pods(deployment.name)
    active = [pod for pod in pods if not pod.draining]
    decision = deployment.last_decision
    if deployment.spec.has_roles:
        return _role_set_status(orchestrator, deployment, instance_id, pods)
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


def _role_set_status(
    orchestrator: Orchestrator, deployment: Deployment, instance_id: str, pods: list[Pod]
) -> DeploymentStatus:
    """Role sets are the replicas: a role set counts as ready only when all its roles are."""
    spec = deployment.spec
    views = [orchestrator.member_view(pod) for pod in pods]
    role_sets = [
        RoleSetStatus(name=role_set_name(spec.name, state.index), ready=state.ready, current=state.current,
                      pods=state.pods)
        for state in role_set_states(deployment.roles_to_plan(), views)
    ]  # fmt: skip
    sets = 1 if spec.mode == "pool" else deployment.replicas
    roles = []
    for role in spec.roles:
        members = [
            view for view in views if not view.draining and view.member and view.member.role == role.name
        ]
        decision = deployment.role_decisions.get(role.name)
        roles.append(RoleStatus(
            name=role.name, role=role.role, desired_replicas=deployment.role_replicas[role.name] * sets,
            ready_replicas=sum(view.ready for view in members), pods=len(members),
            last_decision_ts=decision.ts if decision is not None else 0.0,
        ))  # fmt: skip
    decision = deployment.last_decision
    return DeploymentStatus(
        deployment=spec.name, generation=deployment.generation, desired_replicas=sets,
        ready_replicas=sum(role_set.ready for role_set in role_sets),
        pods=sum(not view.draining for view in views),
        last_decision_ts=decision.ts if decision is not None else 0.0,
        orchestrator=instance_id, ts=time.time(), mode=spec.mode, roles=roles, role_sets=role_sets,
    )  # fmt: skip


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
    return old is None or msgspec.structs.replace(old, ts=new.ts) != new
