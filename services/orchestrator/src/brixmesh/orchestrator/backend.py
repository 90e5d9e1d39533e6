"""What a pod backend does, whatever runs the pods: local processes now, Kubernetes or Ray later.

The orchestrator decides (how many pods, which to drain, when to stop them); a backend only executes on
single pods and reports what happened. Every lifecycle change comes out of :meth:`PodBackend.changes` as a
:class:`~brixmesh.common.messages.PodEvent`, which the orchestrator publishes unchanged on ``pods.*``:

- ``added``: the pod exists and its endpoints are known, not yet serving (also after a restart);
- ``ready``: it passed its readiness probe and may receive requests;
- ``draining``: it must receive no new requests; it is stopped once in-flight work is done;
- ``removed``: it is gone, or its process exited (a restart then starts with ``added`` again).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Container, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from brixmesh.common.messages import PodEvent, PodEventKind, PodInfo, PodPhase, PodStatus

from brixmesh.orchestrator.cordons import Cordons
from brixmesh.orchestrator.spec import DeploymentSpec, RoleMember

ROLE_SET_LABEL = "role_set"
ROLE_NAME_LABEL = "role_name"
"""Pod labels of a role-set deployment's pods: the role set and the role's name (``role`` is its function)."""


class Unschedulable(Exception):
    """No place for a new pod: its node, or every GPU of it, is cordoned."""


@dataclass
class Pod:
    """One pod as its backend tracks it. ``generation`` is the deployment template it was made from."""

    info: PodInfo
    generation: int
    slot: int
    """Small per-deployment ordinal (lowest free at creation): picks the pod's CPU slice."""
    host_slot: int = -1
    """Small ordinal over all of one host's pods (local backend): spreads unpinned engines over its cores."""
    phase: PodPhase = "starting"
    created_at: float = field(default_factory=time.time)
    phase_since: float = field(default_factory=time.time)
    restarts: int = 0
    pid: int = 0
    last_exit_code: int | None = None
    external: bool = False
    """Runs elsewhere: announced and probed only; removing it leaves the engine running."""
    announced: PodEventKind | None = None
    """What consumers were last told of it (None: nothing yet, or ``removed``): the periodic re-announce
    repeats it, so their leases of the pod are renewed in the state they hold."""

    @property
    def name(self) -> str:
        return self.info.pod

    @property
    def deployment(self) -> str:
        return self.info.deployment

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    @property
    def draining(self) -> bool:
        return self.phase == "draining"

    @property
    def member(self) -> RoleMember | None:
        """Where it belongs in a role-set deployment (from its labels), or None."""
        role_set = self.info.labels.get(ROLE_SET_LABEL, "")
        index = role_set.rsplit("-", 1)[-1]
        if not index.isdigit() or ROLE_NAME_LABEL not in self.info.labels:
            return None
        return RoleMember(int(index), self.info.labels[ROLE_NAME_LABEL], self.info.replica_index)

    @property
    def failed(self) -> bool:
        """Its process exited for good or keeps crashing: a role set replaces it with a new pod."""
        return self.phase in ("exited", "crashloop")

    def status(self) -> PodStatus:
        return PodStatus(
            pod=self.info,
            phase=self.phase,
            ready=self.ready,
            restarts=self.restarts,
            pid=self.pid,
            created_at=self.created_at,
            phase_since=self.phase_since,
        )


class PodBackend(Protocol):
    kind: str
    """Short name of the backend ("local", "kubernetes", "ray")."""
    node_name: str
    """The node whose gpu-doctor decisions this backend acts on (unless it spans nodes)."""
    spans_nodes: bool
    """Pods on many nodes, each pod's node in its ``brixmesh.io/node`` label: every node's gpu-doctor
    decisions apply, to the pods on that node."""
    cordons: Cordons
    """Where no new pod may be placed; :meth:`create_pod` honours it."""

    def validate(self, spec: DeploymentSpec) -> None:
        """Raise :class:`~brixmesh.orchestrator.spec.SpecError` if this backend cannot run ``spec`` (engine not
        installed, CPUs it does not have, ...). Called before a spec is accepted."""

    async def create_pod(
        self, spec: DeploymentSpec, generation: int, member: RoleMember | None = None
    ) -> Pod:
        """Start one pod of ``spec``; returns at once (readiness is reported later as a ``ready`` change).
        For a deployment with roles, ``member`` says where it belongs: the pod is launched from
        ``spec.for_role(member.role)`` and its PodInfo carries ``role_set``, ``replica_index`` and
        ``kv_transfer`` (see :func:`~brixmesh.orchestrator.spec.kv_transfer_of`), and the labels
        :data:`ROLE_SET_LABEL`, :data:`ROLE_NAME_LABEL`. Raises :class:`Unschedulable` when cordons leave no
        place for it."""

    async def drain_pod(self, name: str, reason: str) -> None:
        """Mark the pod draining (no new requests); it keeps running until :meth:`delete_pod`."""

    async def delete_pod(self, name: str, reason: str) -> None:
        """Stop the pod and forget it; a no-op for an unknown pod."""

    def list_pods(self, deployment: str | None = None) -> list[Pod]:
        """Current pods, oldest first."""

    def changes(self) -> AsyncIterator[PodEvent]:
        """Every lifecycle change, in order; one consumer."""

    def pending_changes(self) -> list[PodEvent]:
        """Changes queued but not yet taken from :meth:`changes` (to publish them at shutdown)."""

    async def recover(self) -> None:
        """At start, before the first reconcile: take over the pods an earlier orchestrator left running
        (announced as they are, supervised from now on)."""

    async def close(self, *, stop_pods: bool) -> None:
        """Stop every pod (each reported as ``removed``), or with ``stop_pods`` false only stop watching
        them: they keep running for the next orchestrator to :meth:`recover`."""


# --- bookkeeping every backend shares ----------------------------------------------------------------


def set_phase(pod: Pod, phase: PodPhase) -> None:
    if pod.phase != phase:
        pod.phase = phase
        pod.phase_since = time.time()


def announce(changes: asyncio.Queue[PodEvent], kind: PodEventKind, pod: Pod, reason: str) -> None:
    """Queue one change; ``removed`` only for a pod consumers know, ``added`` only for one they do not."""
    if kind == "added":
        if pod.announced is not None:
            return
    elif pod.announced is None:
        return
    pod.announced = None if kind == "removed" else kind
    changes.put_nowait(PodEvent(kind=kind, pod=pod.info, ts=time.time(), reason=reason))


class PodTable:
    """What every backend keeps of its pods and how it hands out their changes: ``_pods`` by name and the
    ``_changes`` queue, both created by the backend's ``__init__``."""

    _pods: dict[str, Pod]
    _changes: asyncio.Queue[PodEvent]

    def list_pods(self, deployment: str | None = None) -> list[Pod]:
        pods = [pod for pod in self._pods.values() if deployment is None or pod.deployment == deployment]
        return sorted(pods, key=lambda pod: pod.created_at)

    async def changes(self) -> AsyncIterator[PodEvent]:
        while True:
            yield await self._changes.get()

    def pending_changes(self) -> list[PodEvent]:
        """Every change queued and not yet taken (to publish them at shutdown)."""
        events = []
        while not self._changes.empty():
            events.append(self._changes.get_nowait())
        return events


def new_pod_name(prefix: str, taken: Container[str]) -> str:
    while True:
        name = f"{prefix}-{secrets.token_hex(3)[:5]}"
        if name not in taken:
            return name


def free_host_slot(pods: Iterable[Pod]) -> int:
    """The lowest host slot no pod holds."""
    taken = {pod.host_slot for pod in pods}
    return next(slot for slot in range(len(taken) + 1) if slot not in taken)


def free_slot(pods: Iterable[Pod], deployment: str, role_name: str = "") -> int:
    """The lowest slot no pod of the deployment's role holds (per role: a role's ``cpus_per_pod`` slices
    its own CPU set)."""
    taken = {
        pod.slot for pod in pods
        if pod.deployment == deployment and pod.info.labels.get(ROLE_NAME_LABEL, "") == role_name
    }  # fmt: skip
    return next(slot for slot in range(len(taken) + 1) if slot not in taken)
