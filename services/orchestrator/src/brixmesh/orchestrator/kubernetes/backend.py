"""The Kubernetes backend: every pod of a deployment is a Kubernetes Pod in the orchestrator's namespace,
owned by its ModelDeployment (garbage-collected with it), with a headless Service per role.

What the backend knows of its pods is what Kubernetes reports: a list, then a watch resumed from the last
resourceVersion (relisting on 410 Gone). A pod is announced ``added`` once it has an IP (its endpoints are
known), ``ready`` when Kubernetes reports its readiness probe passing, ``draining`` when the orchestrator
drains it or anyone deletes it (its preStop hook keeps it serving a few seconds for routers to notice), and
``removed`` when it is gone or its containers ended for good (a failed pod is deleted, so the reconcile loop
replaces it). Nothing is kept locally: a new leader adopts every pod by listing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from typing import Any

from brixmesh.common.kube.api import Api, raw_json, status_message
from brixmesh.common.kube.watching import MERGE_PATCH, list_and_watch
from brixmesh.common.messages import PodEvent, PodEventKind
from kubernetes_asyncio.client.exceptions import ApiException

from brixmesh.orchestrator.backend import Pod, PodTable, new_pod_name, set_phase
from brixmesh.orchestrator.kubernetes.cordons import ConfigMapCordons
from brixmesh.orchestrator.kubernetes.objects import (
    DRAINING_LABEL,
    POD_SELECTOR,
    Images,
    ObservedPod,
    observe_pod,
    pod_manifest,
    role_name,
    role_service_manifest,
)
from brixmesh.orchestrator.kubernetes.resource import ClusterFields
from brixmesh.orchestrator.spec import DeploymentSpec, RoleMember, SpecError

log = logging.getLogger(__name__)


class PodRefused(Exception):
    """The API server did not create a pod (``str()``: one line with its reason)."""


class KubernetesBackend(PodTable):
    kind = "kubernetes"
    spans_nodes = True

    def __init__(
        self,
        api: Api,
        namespace: str,
        *,
        images: Images,
        node_name: str = "",
        max_accelerators_per_pod: int = 8,
    ) -> None:
        self.namespace = namespace
        self.node_name = node_name
        self.cordons = ConfigMapCordons(api, namespace)
        self._api = api
        self._images = images
        self._max_accelerators = max_accelerators_per_pod
        self._cluster: dict[str, tuple[ClusterFields, str | None]] = {}
        self._pods: dict[str, Pod] = {}
        self._gone: set[str] = set()
        """Pods deleted here whose DELETED event has not arrived: a late MODIFIED event must not revive
        them."""
        self._services: set[tuple[str, str]] = set()
        """(deployment, role) whose headless Service exists."""
        self._changes: asyncio.Queue[PodEvent] = asyncio.Queue()
        self._watch: asyncio.Task[None] | None = None
        self._listed = asyncio.Event()

    # --- what the ModelDeployment controller tells the backend -------------------------------------------

    def set_cluster_fields(self, deployment: str, cluster: ClusterFields, owner_uid: str | None) -> None:
        """Image, resources and owner of the deployment's future pods."""
        previous = self._cluster.get(deployment)
        if previous is not None and previous[1] != owner_uid:
            # a new resource of the same name: the old one's Services went with it (owner references)
            self._services = {key for key in self._services if key[0] != deployment}
        self._cluster[deployment] = (cluster, owner_uid)

    def check_cluster_fields(self, spec: DeploymentSpec, cluster: ClusterFields) -> None:
        """Refuse what no node could run: more accelerators per pod than a node has."""
        kind = cluster.resources.accelerator.type
        asks = [("resources.accelerator.count", cluster.resources.accelerator.count)]
        asks += [(f"roles: role {role.name!r}: resources.gpus", role.resources.gpus)
                 for role in spec.roles if "gpus" in role.resources.model_fields_set]  # fmt: skip
        for field, count in asks:
            if count > self._max_accelerators:
                raise SpecError(
                    f"{field}: {count} {kind} per pod is more than a node has "
                    f"(at most {self._max_accelerators})",
                    field,
                )

    # --- PodBackend --------------------------------------------------------------------------------------

    def validate(self, spec: DeploymentSpec) -> None:
        if spec.is_external:
            raise SpecError(
                "external engines are registered by the local backend, not on Kubernetes", "external"
            )
        if spec.cpus is not None:
            raise SpecError("cpus: CPU pinning does not apply on Kubernetes; set resources.cpu", "cpus")
        for role in spec.roles:
            if role.resources.cpus is not None:
                raise SpecError(
                    f"roles: role {role.name!r}: resources.cpus (CPU pinning) does not apply on "
                    "Kubernetes; set the resource's resources.cpu",
                    "roles",
                )

    async def create_pod(
        self, spec: DeploymentSpec, generation: int, member: RoleMember | None = None
    ) -> Pod:
        cluster, owner = self._cluster.get(spec.name, (ClusterFields(), None))
        role = role_name(spec, member)
        slot = self._free_slot(spec.name, role)
        prefix = spec.name if member is None else f"{spec.name}-{member.role_set}-{role}"
        name = new_pod_name(prefix, self._pods)
        await self._ensure_role_service(spec.name, role, owner)
        manifest = pod_manifest(
            spec, cluster, name=name, namespace=self.namespace, generation=generation, slot=slot,
            image=cluster.image or self._images.for_engine(spec.engine), owner_uid=owner, member=member,
            avoid_nodes=sorted(cordon.node for cordon in self.cordons.all() if not cordon.gpu),
        )  # fmt: skip
        try:
            response = await self._api.core.create_namespaced_pod(
                self.namespace, manifest, _preload_content=False
            )
            created = await raw_json(response)
        except ApiException as exc:  # shown as the resource's Ready condition; retried every pass
            raise PodRefused(f"Kubernetes refused pod {name}: {status_message(exc)}") from None
        observed = observe_pod(created)
        assert observed is not None  # we built it
        pod = self._pods.get(name) or Pod(info=observed.info, generation=generation, slot=slot)
        self._pods[name] = pod
        return pod

    async def _ensure_role_service(self, deployment: str, role: str, owner: str | None) -> None:
        if (deployment, role) in self._services:
            return
        manifest = role_service_manifest(deployment, role, namespace=self.namespace, owner_uid=owner)
        try:
            await self._api.core.create_namespaced_service(self.namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:  # already there (an earlier leader made it)
                raise
        self._services.add((deployment, role))

    async def drain_pod(self, name: str, reason: str) -> None:
        pod = self._pods.get(name)
        if pod is None or pod.draining:
            return
        set_phase(pod, "draining")
        self._emit("draining", pod, reason)
        # recorded on the pod itself: a new leader resumes the drain instead of counting it as serving
        with contextlib.suppress(ApiException):
            patch = {"metadata": {"labels": {DRAINING_LABEL: "true"}}}
            await self._api.core.patch_namespaced_pod(name, self.namespace, patch, _content_type=MERGE_PATCH)

    async def delete_pod(self, name: str, reason: str) -> None:
        try:
            await self._api.core.delete_namespaced_pod(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        pod = self._pods.pop(name, None)
        self._gone.add(name)
        if pod is not None:
            self._emit("removed", pod, reason)


    async def recover(self) -> None:
        """Read the cordons, then list every pod of ours (those an earlier leader made included) and keep
        watching them."""
        await self.cordons.load()
        self._watch = asyncio.get_running_loop().create_task(
            list_and_watch(
                self._api.core.list_namespaced_pod, self.namespace, label_selector=POD_SELECTOR,
                on_list=self._on_list, on_event=self._on_event,
            ),
            name="watch-pods",
        )  # fmt: skip
        await self._listed.wait()

    async def close(self, *, stop_pods: bool) -> None:
        await self.cordons.flushed()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if stop_pods:
            await asyncio.gather(
                *(self.delete_pod(name, "orchestrator stopping") for name in list(self._pods))
            )

    # --- what Kubernetes reports -> pods and events ------------------------------------------------------

    async def _on_list(self, items: list[dict[str, Any]]) -> None:
        seen = set()
        for obj in items:
            name = obj["metadata"]["name"]
            seen.add(name)
            await self._observe(name, obj, adopting=not self._listed.is_set())
        for name in [name for name in self._pods if name not in seen]:
            self._forget(name, "gone (not in a fresh list)")
        self._gone &= seen
        self._listed.set()

    async def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self._gone.discard(name)
            self._forget(name, "pod deleted")
        elif kind in ("ADDED", "MODIFIED"):
            await self._observe(name, obj)

    async def _observe(self, name: str, obj: dict[str, Any], *, adopting: bool = False) -> None:
        if name in self._gone:
            return
        observed = observe_pod(obj)
        if observed is None:
            return
        pod = self._pods.get(name)
        if pod is None:
            pod = Pod(info=observed.info, generation=observed.generation, slot=observed.slot)
            pod.created_at = _timestamp(observed.created) or pod.created_at
            self._pods[name] = pod
            if adopting:  # consumers know it from the earlier leader: renewed as it is, not announced anew
                pod.phase = observed.phase
                pod.announced = _announced(observed)
        pod.info = observed.info
        if observed.failed and not observed.terminating:
            # restartPolicy let its containers end (or it was evicted): replaced by the reconcile loop
            set_phase(pod, "exited")
            await self.delete_pod(name, "containers ended")
            return
        self._update(pod, observed)

    def _update(self, pod: Pod, observed: ObservedPod) -> None:
        phase = observed.phase
        if phase == "draining":
            if not pod.draining:
                set_phase(pod, "draining")
                self._emit("draining", pod, "pod terminating" if observed.terminating else "drain resumed")
            return
        if pod.draining:
            return  # drained here, the label patch not yet observed
        if observed.info.endpoint and pod.announced is None:
            self._emit("added", pod, "pod has an IP")
        set_phase(pod, phase)
        if phase == "ready":
            self._emit("ready", pod, "readiness probe passed")
        elif pod.announced == "ready":
            self._emit("added", pod, "readiness probe failing")

    def _forget(self, name: str, reason: str) -> None:
        pod = self._pods.pop(name, None)
        if pod is not None:
            self._emit("removed", pod, reason)

    def _emit(self, kind: PodEventKind, pod: Pod, reason: str) -> None:
        """Queue a change consumers have not been told: ``draining`` and ``removed`` only for a pod they know,
        ``ready`` after an ``added`` (the periodic re-announce renews the state they hold)."""
        if kind == pod.announced:
            return
        if pod.announced is None and kind != "added":
            if kind != "ready":
                return
            self._emit("added", pod, reason)
        pod.announced = None if kind == "removed" else kind
        self._changes.put_nowait(PodEvent(kind=kind, pod=pod.info, ts=time.time(), reason=reason))

    # --- naming --------------------------------------------------------------------------------------------

    def _free_slot(self, deployment: str, role: str) -> int:
        taken = {
            pod.slot for pod in self._pods.values()
            if pod.deployment == deployment and role_name_of(pod) == role
        }  # fmt: skip
        return next(slot for slot in range(len(taken) + 1) if slot not in taken)


def role_name_of(pod: Pod) -> str:
    member = pod.member
    return member.role if member is not None else pod.info.role


def _announced(observed: ObservedPod) -> PodEventKind | None:
    if observed.phase in ("ready", "draining"):
        return observed.phase
    return "added" if observed.info.endpoint else None


def _timestamp(text: str) -> float | None:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None
