"""PodAutoscaler custom resources of one namespace -> the autoscalers in force (on Kubernetes,
``BRIXMESH_K8S_PODAUTOSCALERS=true``).

The resources are listed, then watched (resumed from the last resourceVersion; after 410 Gone listed again,
and that list is the whole truth, so a resource deleted meanwhile is dropped). Each is parsed by the same
model as a spec file or an HTTP ``PUT`` (the CRD's schema, generated from that model, refuses most mistakes
at admission already): a resource the model refuses is logged and listed in :attr:`PodAutoscalerSync.refused`,
and an autoscaler it had before keeps its last accepted spec. Deleting a resource removes its autoscaler;
autoscalers from files or the HTTP API are not the resources' to remove.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from brixmesh.common.kube.api import Api
from brixmesh.common.kube.watching import list_and_watch

from brixmesh.autoscaler.registry import Autoscalers
from brixmesh.autoscaler.spec import SpecError, parse_spec

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "brixmesh.io", "v1alpha1", "podautoscalers"


class PodAutoscalerSync:
    def __init__(self, api: Api, namespace: str, autoscalers: Autoscalers) -> None:
        self.namespace = namespace
        self.api = api
        self._autoscalers = autoscalers
        self._owned: set[str] = set()
        """Autoscalers that came from a resource."""
        self.refused: dict[str, str] = {}
        """Resource name -> why its spec was refused (until a later version is accepted or it is deleted)."""
        self._listed = asyncio.Event()

    async def run(self) -> None:
        await list_and_watch(
            self.api.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
            on_list=self._on_list, on_event=self._on_event,
        )  # fmt: skip

    async def wait_listed(self) -> None:
        await self._listed.wait()

    async def _on_list(self, items: list[dict[str, Any]]) -> None:
        names = {item["metadata"]["name"] for item in items}
        for item in items:
            self._apply(item)
        for name in self._owned - names:
            self._drop(name, "gone (not in a fresh list)")
        self.refused = {name: why for name, why in self.refused.items() if name in names}
        self._listed.set()

    async def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            name = obj["metadata"]["name"]
            self.refused.pop(name, None)
            self._drop(name, "resource deleted")
        elif kind in ("ADDED", "MODIFIED"):
            self._apply(obj)

    def _apply(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        try:
            spec = parse_spec(obj.get("spec") or {}, name=name)
        except SpecError as exc:
            if self.refused.get(name) != str(exc):
                log.warning("PodAutoscaler %s refused: %s", name, exc)
            self.refused[name] = str(exc)
            return
        self.refused.pop(name, None)
        if self._autoscalers.put(spec):
            log.info("PodAutoscaler %s: scaling %s", name, spec.deployment)
        self._owned.add(name)

    def _drop(self, name: str, reason: str) -> None:
        if name in self._owned:
            self._owned.discard(name)
            self._autoscalers.delete(name)
            log.info("PodAutoscaler %s removed: %s", name, reason)
