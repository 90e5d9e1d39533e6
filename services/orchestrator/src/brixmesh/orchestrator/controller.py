"""The orchestrator's state and decisions: the deployments, their desired replicas, and a reconcile loop that
makes a backend's pods match them (start, drain-then-stop, rolling replacement after a template change).

All changes (HTTP applies, scale decisions, pod state changes) only update desired state and wake the loop;
the loop alone starts and drains pods, so there is never more than one actor deciding about a deployment.

Desired state is durable: every change is written to the state directory (:mod:`~brixmesh.orchestrator.state`)
before it is acted on, and :meth:`Orchestrator.restore` reads it back at start. Start-up sources (deployment
files, ``--engines``) are then applied over it with :meth:`Orchestrator.apply_startup` (see
``docs/orchestrator.md``: they win at start; the HTTP API wins afterwards; the last writer owns a deployment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from brixmesh.common.messages import NODE_LABEL, GpuDecision, ScaleDecision

from brixmesh.orchestrator.backend import Pod, PodBackend
from brixmesh.orchestrator.drain import wait_until_idle
from brixmesh.orchestrator.planner import PodView, plan_scale
from brixmesh.orchestrator.role_planner import MemberView, RoleView, plan_role_sets
from brixmesh.orchestrator.spec import DeploymentSpec, SpecError, merge_patch, parse_spec
from brixmesh.orchestrator.state import DeploymentRecord, Origin, RecordDir

log = logging.getLogger(__name__)

DecisionOutcome = Literal[
    "applied", "unchanged", "stale", "duplicate", "unknown_deployment", "role_mismatch", "fixed_size"
]
GpuOutcome = Literal["applied", "unchanged", "observed", "other_node"]
ORPHAN_DRAIN_GRACE_S = 30.0
"""Grace for pods whose deployment is gone before the reconcile loop saw it deleted (rare)."""


class UnknownDeployment(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"deployment {self.name!r} not found"


@dataclass
class Deployment:
    spec: DeploymentSpec
    generation: int
    replicas: int
    """Desired replicas now: the spec's, until a scale decision or PATCH changes it."""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    last_decision: ScaleDecision | None = None
    origin: Origin = "api"
    decision_received_at: float | None = None
    """When (our clock) the last scale decision for it was accepted; an autoscaler re-sends its decision in
    force at least every few seconds, so a recent one means an autoscaler owns ``replicas``."""
    error: str | None = None
    """Why the last reconcile of this deployment failed (retried every reconcile), or None."""
    role_generations: dict[str, int] = field(default_factory=dict)
    """Role sets: the generation of each role's current template (pods of another are replaced)."""
    role_replicas: dict[str, int] = field(default_factory=dict)
    """Role sets: desired pods of each role per role set (pool mode: scaled by decisions for the role)."""
    role_decisions: dict[str, ScaleDecision] = field(default_factory=dict)
    """Pool mode: the last scale decision taken for each role."""

    def record(self) -> DeploymentRecord:
        return DeploymentRecord(
            spec=self.spec.model_dump(mode="json"), generation=self.generation, replicas=self.replicas,
            created_at=self.created_at, updated_at=self.updated_at, origin=self.origin,
            last_decision=self.last_decision, role_generations=self.role_generations,
            role_replicas=self.role_replicas, role_decisions=self.role_decisions,
        )  # fmt: skip

    def update_roles(self, old: DeploymentSpec | None) -> bool:
        """Take the roles of ``self.spec`` over from ``old``: a role whose template changed (or is new) gets
        the next generation, a role whose spec replicas changed gets them. Returns whether any template
        changed (the deployment's generation is then bumped by the caller)."""
        spec = self.spec
        old_roles = {role.name: role for role in old.roles} if old is not None else {}
        changed = [
            role.name for role in spec.roles
            if old is None or role.name not in old_roles
            or spec.role_template(role.name) != old.role_template(role.name)
        ]  # fmt: skip
        removed = old_roles.keys() - {role.name for role in spec.roles}
        next_generation = self.generation + 1 if old is not None and (changed or removed) else self.generation
        self.role_generations = {
            role.name: next_generation if role.name in changed else self.role_generations[role.name]
            for role in spec.roles
        }  # fmt: skip
        self.role_replicas = {
            role.name: role.replicas
            if role.name not in old_roles or old_roles[role.name].replicas != role.replicas
            else self.role_replicas.get(role.name, role.replicas)
            for role in spec.roles
        }  # fmt: skip
        self.role_decisions = {
            name: decision for name, decision in self.role_decisions.items() if name in self.role_replicas
        }
        return next_generation != self.generation

    def is_current(self, pod: Pod) -> bool:
        """Whether ``pod`` runs the current template (of its role, in a role-set deployment)."""
        member = pod.member
        if not self.spec.has_roles or member is None:
            return pod.generation == self.generation
        return pod.generation == self.role_generations.get(member.role)

    def roles_to_plan(self) -> list[RoleView]:
        return [
            RoleView(role.name, self.role_replicas[role.name], self.role_generations[role.name],
                     role.upgrade_order)
            for role in self.spec.roles
        ]  # fmt: skip

    @property
    def name(self) -> str:
        return self.spec.name


class Orchestrator:
    def __init__(
        self,
        backend: PodBackend,
        *,
        reconcile_interval_s: float = 1.0,
        drain_poll_interval_s: float = 0.25,
        decision_max_age_s: float = 60.0,
        store: RecordDir[DeploymentRecord] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.deployments: dict[str, Deployment] = {}
        self.on_reconciled: Callable[[], Awaitable[None]] | None = None
        """Called after every reconcile pass (the deployment-status publisher)."""
        self._store = store
        self._reconcile_interval_s = reconcile_interval_s
        self._drain_poll_interval_s = drain_poll_interval_s
        self._decision_max_age_s = decision_max_age_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.Task[None] | None = None

    # --- desired state ---------------------------------------------------------------------------------

    def apply(self, spec: DeploymentSpec, origin: Origin = "api") -> tuple[Deployment, bool]:
        """Create or update a deployment; returns it and whether it is new. A spec whose ``replicas`` did not
        change keeps the current (possibly autoscaled) replica count."""
        self.backend.validate(spec)
        now = self._clock()
        current = self.deployments.get(spec.name)
        if current is None:
            deployment = Deployment(
                spec=spec, generation=1, replicas=spec.replicas, created_at=now, updated_at=now, origin=origin
            )
            deployment.update_roles(None)
            self.deployments[spec.name] = deployment
            created = True
        else:
            deployment, created = current, False
            old = current.spec
            deployment.spec = spec
            roles_changed = deployment.update_roles(old if old.has_roles else None)
            if spec.template() != old.template() or spec.has_roles != old.has_roles or roles_changed:
                deployment.generation += 1
                if spec.has_roles and not old.has_roles:  # no pod so far is of a role set: every role is new
                    generation = deployment.generation
                    deployment.role_generations = dict.fromkeys(deployment.role_generations, generation)
            if spec.replicas != old.replicas:
                deployment.replicas = spec.replicas
            deployment.origin = origin
            deployment.updated_at = now
        self._save(deployment)
        self._wake.set()
        return deployment, created

    def restore(self) -> None:
        """Take back the deployments recorded in the state directory (before :meth:`apply_startup`)."""
        if self._store is None:
            return
        for name, record in self._store.load_all().items():
            try:
                spec = parse_spec(record.spec, source=f"{self._store.directory / name}.json")
                self.backend.validate(spec)
            except SpecError as exc:
                log.error("cannot restore deployment %s: %s", name, exc)
                continue
            deployment = Deployment(
                spec=spec, generation=record.generation, replicas=record.replicas,
                created_at=record.created_at, updated_at=record.updated_at,
                last_decision=record.last_decision, origin=record.origin,
                role_generations=record.role_generations, role_replicas=record.role_replicas,
                role_decisions=record.role_decisions,
            )  # fmt: skip
            if spec.has_roles and set(record.role_generations) != {role.name for role in spec.roles}:
                log.error("cannot restore deployment %s: its role state does not match its roles", name)
                continue
            self.deployments[spec.name] = deployment
        self._wake.set()

    def apply_startup(self, specs: Iterable[DeploymentSpec]) -> None:
        """Apply the start-up sources over the restored state; a deployment they applied last time and no
        longer list is deleted (one applied over the HTTP API stays)."""
        listed = set()
        for spec in specs:
            self.apply(spec, origin="startup")
            listed.add(spec.name)
        for name in [n for n, d in self.deployments.items() if d.origin == "startup" and n not in listed]:
            log.info("deleting deployment %s: its start-up source no longer lists it", name)
            self.delete(name)

    def autoscaled(self, deployment: Deployment) -> bool:
        received = deployment.decision_received_at
        return received is not None and self._clock() - received <= self._decision_max_age_s

    def _save(self, deployment: Deployment) -> None:
        if self._store is not None:
            self._store.save(deployment.name, deployment.record())

    def patch(self, name: str, changes: Mapping[str, Any]) -> Deployment:
        """Merge-patch a deployment's spec; ``{"replicas": n}`` sets the desired replicas directly."""
        current = self.get(name)
        if "name" in changes and changes["name"] != name:
            raise SpecError(f"name cannot be changed by a patch (deployment {name!r})", "name")
        merged = merge_patch(current.spec.to_dict(), changes)
        if "external" in changes and "replicas" not in changes:
            merged.pop("replicas", None)  # follows the new endpoint list
        spec = parse_spec(merged, source="patch")
        deployment, _ = self.apply(spec)
        if "replicas" in changes:
            deployment.replicas = spec.replicas
            self._save(deployment)
        return deployment

    def delete(self, name: str) -> list[str]:
        """Forget the deployment and drain all its pods; returns their names."""
        deployment = self.deployments.pop(name, None)
        if deployment is None:
            raise UnknownDeployment(name)
        if self._store is not None:
            self._store.drop(name)
        names = []
        for pod in self.backend.list_pods(name):
            self._start_drain(pod.name, deployment.spec.drain_grace_s, "deployment deleted")
            names.append(pod.name)
        self._wake.set()
        return names

    def get(self, name: str) -> Deployment:
        deployment = self.deployments.get(name)
        if deployment is None:
            raise UnknownDeployment(name)
        return deployment

    def apply_decision(self, decision: ScaleDecision) -> DecisionOutcome:
        """Take an autoscaler verdict unless it is for an unknown deployment or role, or older than (or the
        same as) the last one taken, or older than ``decision_max_age_s``."""
        deployment = self.deployments.get(decision.deployment)
        if deployment is None:
            return "unknown_deployment"
        if deployment.spec.mode == "pool" and deployment.spec.has_roles:
            return self._apply_role_decision(deployment, decision)
        if decision.role not in ("both", deployment.spec.role):
            return "role_mismatch"  # replica mode: role sets are the unit, so only whole-deployment decisions
        if deployment.spec.is_external:
            return "fixed_size"
        last = deployment.last_decision
        if last is not None and decision.ts <= last.ts:
            return "duplicate" if decision.ts == last.ts else "stale"
        if self._clock() - decision.ts > self._decision_max_age_s:
            return "stale"
        deployment.last_decision = decision
        deployment.decision_received_at = self._clock()
        self._wake.set()  # the status that acknowledges it goes out after the next pass
        if decision.desired_replicas == deployment.replicas:
            self._save(deployment)
            return "unchanged"
        log.info(
            "scaling %s %d -> %d (%s: %s)", deployment.name, deployment.replicas, decision.desired_replicas,
            decision.algorithm, decision.reason,
        )
        deployment.replicas = decision.desired_replicas
        deployment.updated_at = self._clock()
        self._save(deployment)
        return "applied"

    def _apply_role_decision(self, deployment: Deployment, decision: ScaleDecision) -> DecisionOutcome:
        """Pool mode: a decision scales the one role whose function it targets (decode by KV usage or
        inter-token latency, prefill by queue or TTFT); one matching no role, or several, is refused."""
        targets = [role.name for role in deployment.spec.roles if role.role == decision.role]
        if len(targets) != 1:
            return "role_mismatch"
        (role,) = targets
        last = deployment.role_decisions.get(role)
        if last is not None and decision.ts <= last.ts:
            return "duplicate" if decision.ts == last.ts else "stale"
        if self._clock() - decision.ts > self._decision_max_age_s:
            return "stale"
        deployment.role_decisions[role] = decision
        deployment.decision_received_at = self._clock()
        self._wake.set()
        if decision.desired_replicas == deployment.role_replicas[role]:
            self._save(deployment)
            return "unchanged"
        log.info(
            "scaling %s role %s %d -> %d (%s: %s)", deployment.name, role, deployment.role_replicas[role],
            decision.desired_replicas, decision.algorithm, decision.reason,
        )
        deployment.role_replicas[role] = decision.desired_replicas
        deployment.updated_at = self._clock()
        self._save(deployment)
        return "applied"

    def apply_gpu_decision(self, decision: GpuDecision) -> GpuOutcome:
        """Act on a gpu-doctor's verdict about a node of this backend. Level-triggered and idempotent: the
        doctor re-sends it while it stands; a cordon already in place or a pod already draining or gone is
        left as it is. Drained pods are replaced by the reconcile loop (it counts only pods that do not
        drain), on a GPU no cordon blocks.

        A backend that spans nodes (Kubernetes) takes every node's decisions and drains only the named pods
        that run on that node; GPUs are its device plugin's to place, so it cordons whole nodes only."""
        backend = self.backend
        if not backend.spans_nodes and decision.node != backend.node_name:
            return "other_node"
        if decision.action == "observe":
            return "observed"
        changed = False
        why = f"gpu-doctor {decision.action}: {decision.reason}"
        if decision.action == "replace_pod" and decision.gpu and not backend.spans_nodes:
            changed |= backend.cordons.cordon(decision.node, decision.gpu, why)
        elif decision.action == "cordon_node":
            changed |= backend.cordons.cordon(decision.node, "", why)
        pods = {pod.name: pod for pod in backend.list_pods()}
        for name in decision.pods:
            pod = pods.get(name)
            if pod is None or name in self._drains:
                continue
            if backend.spans_nodes and pod.info.labels.get(NODE_LABEL) != decision.node:
                continue  # a doctor speaks for its own node only
            deployment = self.deployments.get(pod.deployment)
            grace_s = deployment.spec.drain_grace_s if deployment is not None else ORPHAN_DRAIN_GRACE_S
            self._start_drain(name, grace_s, why)
            changed = True
        if changed:
            log.warning("%s on %s gpu %r, pods %s", why, decision.node, decision.gpu, decision.pods)
            self._wake.set()
        return "applied" if changed else "unchanged"

    def wake(self) -> None:
        self._wake.set()

    # --- reconcile loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.current_task()
        self._http = httpx.AsyncClient()
        try:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._reconcile_interval_s)
                self._wake.clear()
                await self.reconcile()
                if self.on_reconciled is not None:
                    await self.on_reconciled()
        finally:
            await self._http.aclose()

    async def reconcile(self) -> None:
        for deployment in list(self.deployments.values()):
            try:
                await self._reconcile(deployment)
            except Exception as exc:  # a backend failure must not stop the other deployments
                error = f"{type(exc).__name__}: {exc}"
                if error != deployment.error:
                    log.exception("reconciling %s failed; retrying", deployment.name)
                deployment.error = error
            else:
                deployment.error = None
        for pod in self.backend.list_pods():
            if pod.name in self._drains:
                continue
            deployment = self.deployments.get(pod.deployment)
            if deployment is None:
                self._start_drain(pod.name, ORPHAN_DRAIN_GRACE_S, "deployment deleted")
            elif pod.draining:  # adopted while an earlier orchestrator drained it
                self._start_drain(pod.name, deployment.spec.drain_grace_s, "drain resumed")

    async def _reconcile(self, deployment: Deployment) -> None:
        if deployment.spec.has_roles:
            await self._reconcile_role_sets(deployment)
            return
        pods = [pod for pod in self.backend.list_pods(deployment.name) if pod.name not in self._drains]
        plan = plan_scale(deployment.replicas, deployment.generation, [_view(pod) for pod in pods])
        for _ in range(plan.create):
            await self.backend.create_pod(deployment.spec, deployment.generation)
        outdated = {pod.name for pod in pods if pod.generation != deployment.generation}
        for name in plan.drain:
            reason = "replaced by a newer template" if name in outdated else "scale down"
            self._start_drain(name, deployment.spec.drain_grace_s, reason)

    async def _reconcile_role_sets(self, deployment: Deployment) -> None:
        views = [self.member_view(pod) for pod in self.backend.list_pods(deployment.name)]
        spec = deployment.spec
        plan = plan_role_sets(spec.mode, deployment.replicas, deployment.roles_to_plan(), spec.update, views)
        for name, reason in plan.drain:
            self._start_drain(name, spec.drain_grace_s, reason)
        for member in plan.create:
            await self.backend.create_pod(spec, deployment.role_generations[member.role], member)

    def member_view(self, pod: Pod) -> MemberView:
        return MemberView(
            name=pod.name, member=pod.member, generation=pod.generation, ready=pod.ready,
            created_at=pod.created_at, draining=pod.draining or pod.name in self._drains, failed=pod.failed,
        )  # fmt: skip

    def draining(self) -> list[str]:
        return list(self._drains)

    def _start_drain(self, name: str, grace_s: float, reason: str) -> None:
        if name in self._drains:
            return
        task = asyncio.get_running_loop().create_task(self._drain(name, grace_s, reason), name=f"drain:{name}")
        self._drains[name] = task

    async def _drain(self, name: str, grace_s: float, reason: str) -> None:
        try:
            pod = next((p for p in self.backend.list_pods() if p.name == name), None)
            if pod is None:
                return
            serving = pod.ready or pod.draining
            await self.backend.drain_pod(name, reason)
            if pod.external:
                removal = "external engine left running"
            elif serving and pod.info.metrics_url and self._http is not None:
                outcome = await wait_until_idle(
                    self._http, pod.info.metrics_url, grace_s=grace_s, poll_interval_s=self._drain_poll_interval_s
                )
                removal = outcome.describe()
            else:
                removal = "was not serving"
            await self.backend.delete_pod(name, f"{reason}; {removal}")
        except Exception:
            log.exception("draining %s failed; stopping it", name)
            await self.backend.delete_pod(name, f"{reason}; drain failed")
        finally:
            self._drains.pop(name, None)
            self._wake.set()

    async def close(self, *, stop_pods: bool) -> None:
        """Stop reconciling; stop every pod only with ``stop_pods`` (else the next orchestrator adopts them,
        and resumes the drains cut short here)."""
        if self._loop is not None:
            # first: a pass still running would start pods in place of the ones stopped below
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        for task in list(self._drains.values()):
            task.cancel()
        await asyncio.gather(*self._drains.values(), return_exceptions=True)
        await self.backend.close(stop_pods=stop_pods)


def _view(pod: Pod) -> PodView:
    return PodView(
        name=pod.name, generation=pod.generation, ready=pod.ready, created_at=pod.created_at, draining=pod.draining
    )
