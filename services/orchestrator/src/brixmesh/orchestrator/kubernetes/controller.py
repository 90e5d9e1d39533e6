"""ModelDeployment custom resources <-> the orchestrator's deployments.

- Every ModelDeployment of the namespace (listed, then watched) is validated by the same models as any spec,
  then applied; one that fails (an engine the orchestrator does not know, more accelerators than a node has,
  a field the schema could not check) is refused: its ``Accepted`` condition says why and nothing is created
  for it (a deployment accepted earlier keeps its last accepted spec).
- ``spec.replicas`` is the desired replica count (role sets, for a deployment with roles): ``kubectl scale``
  (the scale subresource) and an HPA change it there; an autoscaler's decision is written there too
  (:meth:`ModelDeploymentSync.persist_replicas`, with a pool-mode role's replicas in ``spec.roles``; a patch
  carrying the resourceVersion it read, retried on 409), so the resource is the durable desired state.
- After each reconcile pass the status subresource is patched where it changed: pods, ready, updated, per
  role, ``observedGeneration``, the pod selector, and the ``Accepted`` / ``Ready`` conditions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from brixmesh.common.crd import ConditionClock
from brixmesh.common.kube.api import Api
from brixmesh.common.kube.watching import MERGE_PATCH, list_and_watch
from kubernetes_asyncio.client.exceptions import ApiException

from brixmesh.orchestrator.controller import Orchestrator, UnknownDeployment
from brixmesh.orchestrator.kubernetes.backend import KubernetesBackend
from brixmesh.orchestrator.kubernetes.objects import selector_labels
from brixmesh.orchestrator.kubernetes.resource import (
    GROUP,
    PLURAL,
    VERSION,
    ModelDeploymentStatus,
    RoleSetStatus,
    RoleStatus,
    parse_resource,
)
from brixmesh.orchestrator.spec import SpecError
from brixmesh.orchestrator.status import deployment_status

log = logging.getLogger(__name__)

SCALE_ATTEMPTS = 5


class ModelDeploymentSync:
    def __init__(
        self, api: Api, namespace: str, orchestrator: Orchestrator, backend: KubernetesBackend
    ) -> None:
        self.namespace = namespace
        self._api = api
        self._orchestrator = orchestrator
        self._backend = backend
        self._generations: dict[str, int] = {}
        """metadata.generation of each resource as last handled (accepted or refused)."""
        self._refusals: dict[str, str] = {}
        self._written: dict[str, dict[str, Any]] = {}
        self._conditions = ConditionClock()
        self._listed = asyncio.Event()

    async def run(self) -> None:
        await list_and_watch(
            self._api.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
            on_list=self._on_list, on_event=self._on_event,
        )  # fmt: skip

    async def wait_listed(self) -> None:
        await self._listed.wait()

    # --- resources -> deployments --------------------------------------------------------------------------

    async def _on_list(self, items: list[dict[str, Any]]) -> None:
        names = set()
        for obj in items:
            names.add(obj["metadata"]["name"])
            self._take(obj)
        for name in [name for name in self._orchestrator.deployments if name not in names]:
            self._drop(name)
        self._listed.set()

    async def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self._drop(obj["metadata"]["name"])
        elif kind in ("ADDED", "MODIFIED"):
            self._take(obj)

    def _take(self, obj: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        name = metadata["name"]
        self._generations[name] = int(metadata.get("generation", 0))
        try:
            spec, cluster = parse_resource(obj)
            self._backend.check_cluster_fields(spec, cluster)
            self._backend.validate(spec)
        except SpecError as exc:
            if self._refusals.get(name) != str(exc):
                log.warning("refused %s", exc)
            self._refusals[name] = str(exc)
            self._orchestrator.wake()  # the refusal goes into the status after the next pass
            return
        self._refusals.pop(name, None)
        self._backend.set_cluster_fields(name, cluster, metadata.get("uid"))
        current = self._orchestrator.deployments.get(name)
        if current is not None and current.spec == spec:
            return  # a status write, or a change of metadata only
        # replicas changed in the resource (kubectl scale, a decision written back) replace the desired ones;
        # unchanged, they leave a decision taken but not yet written back in place
        self._orchestrator.apply(spec)

    def _drop(self, name: str) -> None:
        self._generations.pop(name, None)
        self._refusals.pop(name, None)
        self._written.pop(name, None)
        self._conditions.forget(name)
        try:
            self._orchestrator.delete(name)
        except UnknownDeployment:
            pass

    # --- decisions -> resources ---------------------------------------------------------------------------

    async def persist_replicas(self, name: str) -> bool:
        """Write the deployment's desired replicas (and, in pool mode, each role's) into the resource's spec,
        after a scale decision changed them; False if it is gone or kept changing under us."""
        deployment = self._orchestrator.deployments.get(name)
        if deployment is None:
            return False
        for _ in range(SCALE_ATTEMPTS):
            try:
                obj = await self._api.custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name
                )
                spec = obj.get("spec", {})
                desired: dict[str, Any] = {"replicas": deployment.replicas}
                if spec.get("roles"):
                    replicas = deployment.role_replicas
                    desired["roles"] = [
                        {**role, "replicas": replicas.get(role.get("name"), role.get("replicas"))}
                        for role in spec["roles"]
                    ]  # fmt: skip
                if all(spec.get(key) == value for key, value in desired.items()):
                    return True
                patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": desired}
                await self._api.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, patch, _content_type=MERGE_PATCH
                )
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409:
                    raise
                log.info(
                    "scaling %s: the resource changed meanwhile (409); retrying on the new version", name
                )
        log.warning("scaling %s: gave up after %d conflicting writes", name, SCALE_ATTEMPTS)
        return False

    # --- deployments -> status -----------------------------------------------------------------------------

    def status(self, name: str) -> ModelDeploymentStatus:
        """What the orchestrator observes of the resource ``name`` now: replicas are pods, or role sets for a
        deployment with roles (a role set counts as ready only when all its roles are)."""
        deployment = self._orchestrator.deployments.get(name)
        refusal = self._refusals.get(name)
        if refusal is not None:
            accepted = self._conditions.condition(name, "Accepted", "False", "InvalidSpec", refusal)
        else:
            accepted = self._conditions.condition(name, "Accepted", "True", "Valid", "")
        selector = ",".join(f"{key}={value}" for key, value in selector_labels(name).items())
        observed = self._generations.get(name, 0)
        if deployment is None:
            ready = self._conditions.condition(name, "Ready", "False", "NotAccepted", "no accepted spec")
            return ModelDeploymentStatus(
                observedGeneration=observed, selector=selector, conditions=[accepted, ready]
            )
        fleet = deployment_status(self._orchestrator, deployment, "")
        replicas = len(fleet.role_sets) if deployment.spec.has_roles else fleet.pods
        pods = [pod for pod in self._backend.list_pods(name) if not pod.draining]
        if deployment.error:
            ready = self._conditions.condition(name, "Ready", "False", "ReconcileFailed", deployment.error)
        elif fleet.ready_replicas >= fleet.desired_replicas:
            ready = self._conditions.condition(name, "Ready", "True", "AllReplicasReady",
                                    f"{fleet.ready_replicas}/{fleet.desired_replicas} ready")  # fmt: skip
        else:
            ready = self._conditions.condition(name, "Ready", "False", "Progressing",
                                    f"{fleet.ready_replicas}/{fleet.desired_replicas} ready")  # fmt: skip
        if fleet.roles:
            roles = {
                role.name: RoleStatus(replicas=role.pods, ready=role.ready_replicas) for role in fleet.roles
            }
        else:
            roles = {deployment.spec.role: RoleStatus(replicas=fleet.pods, ready=fleet.ready_replicas)}
        return ModelDeploymentStatus(
            replicas=replicas,
            readyReplicas=fleet.ready_replicas,
            updatedReplicas=sum(deployment.is_current(pod) for pod in pods),
            roles=roles,
            roleSets=[
                RoleSetStatus(name=r.name, ready=r.ready, current=r.current, pods=r.pods)
                for r in fleet.role_sets
            ],  # fmt: skip
            observedGeneration=observed,
            selector=selector,
            conditions=[accepted, ready],
        )

    def after_reconcile(self, then: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """An ``on_reconciled`` hook: ``then``, and the statuses written."""

        async def hook() -> None:
            await then()
            await self.write_statuses()

        return hook

    async def write_statuses(self) -> None:
        """After a reconcile pass: patch the status of every resource whose status changed."""
        for name in list(self._generations):
            status = self.status(name).model_dump()
            if self._written.get(name) == status:
                continue
            try:
                await self._api.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    name,
                    {"status": status},
                    _content_type=MERGE_PATCH,
                )
            except ApiException as exc:
                if exc.status != 404:  # deleted meanwhile: its DELETED event follows
                    log.warning("status of %s not written: %s %s", name, exc.status, exc.reason)
                continue
            self._written[name] = status
