"""Custom resources of one kind in a namespace, as a service's specs (the autoscaler's PodAutoscalers, the
adapter-manager's ModelAdapters).

The resources are listed, then watched (resumed from the last resourceVersion; after 410 Gone listed again,
and that list is the whole truth, so a resource deleted meanwhile is dropped). Each is parsed by the service's
own spec model, the one its files and HTTP API use (the CRD's schema, generated from that model, refuses
most mistakes at admission already): a resource the model refuses is logged and listed in
:attr:`ResourceSpecs.refused`, and what the service had from it before stays in force. Either way the
verdict goes on the resource's status subresource (:class:`~brixmesh.common.crd.SpecStatus`: the generation
read and an ``Accepted`` condition), written when it changes. Deleting a resource removes its spec; specs
from files or an HTTP API are not the resources' to remove.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from brixmesh.common.crd import ConditionClock, SpecStatus
from brixmesh.common.kube.api import Api, status_message
from brixmesh.common.kube.watching import MERGE_PATCH, list_and_watch
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

GROUP, VERSION = "brixmesh.io", "v1alpha1"
Spec = TypeVar("Spec")


class ResourceSpecs(Generic[Spec]):
    def __init__(
        self,
        api: Api,
        namespace: str,
        plural: str,
        *,
        parse: Callable[[str, dict[str, Any]], Spec],
        apply: Callable[[Spec], object],
        remove: Callable[[str], object],
        refusals: tuple[type[Exception], ...],
        owned: Iterable[str] = (),
    ) -> None:
        """``parse(name, spec)`` raises one of ``refusals`` (``str()``: one line) for a spec it refuses;
        ``owned``: names a resource gave the service before (kept in its state), dropped when the first list
        no longer has them."""
        self.api = api
        self.namespace = namespace
        self.plural = plural
        self._parse = parse
        self._apply = apply
        self._remove = remove
        self._refusals = refusals
        self._owned = set(owned)
        self.refused: dict[str, str] = {}
        """Resource name -> why its spec was refused (until a later version is accepted or it is deleted)."""
        self._conditions = ConditionClock()
        self._written: dict[str, tuple[int, str]] = {}
        """Resource name -> (generation, verdict) as last written to its status."""
        self._listed = asyncio.Event()

    async def run(self) -> None:
        await list_and_watch(
            self.api.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, self.plural,
            on_list=self._on_list, on_event=self._on_event,
        )  # fmt: skip

    async def wait_listed(self) -> None:
        await self._listed.wait()

    async def _on_list(self, items: list[dict[str, Any]]) -> None:
        names = {item["metadata"]["name"] for item in items}
        for item in items:
            await self._accept(item)
        for name in self._owned - names:
            self._drop(name, "gone (not in a fresh list)")
        self.refused = {name: why for name, why in self.refused.items() if name in names}
        self._written = {name: written for name, written in self._written.items() if name in names}
        self._listed.set()

    async def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            name = obj["metadata"]["name"]
            self.refused.pop(name, None)
            self._written.pop(name, None)
            self._conditions.forget(name)
            self._drop(name, "resource deleted")
        elif kind in ("ADDED", "MODIFIED"):
            await self._accept(obj)

    async def _accept(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        try:
            spec = self._parse(name, obj.get("spec") or {})
        except self._refusals as exc:
            if self.refused.get(name) != str(exc):
                log.warning("%s %s refused: %s", self.plural, name, exc)
            self.refused[name] = str(exc)
        else:
            self.refused.pop(name, None)
            self._apply(spec)
            self._owned.add(name)
        await self._write_status(name, int(obj["metadata"].get("generation") or 0), obj.get("status") or {})

    async def _write_status(self, name: str, generation: int, current: dict[str, Any]) -> None:
        """The verdict on the resource's status, unless it is there already (a status write is a watch event of
        its own: it comes back here and changes nothing; after a restart, what an earlier run wrote stands)."""
        refusal = self.refused.get(name)
        verdict = refusal if refusal is not None else ""
        if self._written.get(name) == (generation, verdict):
            return
        shown = next((c for c in current.get("conditions") or [] if c.get("type") == "Accepted"), {})
        if current.get("observedGeneration") == generation and shown.get("status") == (
            "True" if refusal is None else "False"
        ) and shown.get("message", "") == verdict:
            self._written[name] = (generation, verdict)
            return
        if refusal is None:
            accepted = self._conditions.condition(name, "Accepted", "True", "Valid", "")
        else:
            accepted = self._conditions.condition(name, "Accepted", "False", "InvalidSpec", refusal)
        status = SpecStatus(observedGeneration=generation, conditions=[accepted])
        try:
            await self.api.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, self.plural, name, {"status": status.model_dump()},
                _content_type=MERGE_PATCH,
            )  # fmt: skip
        except ApiException as exc:  # written again with the resource's next event or list
            if exc.status != 404:  # deleted meanwhile: its DELETED event follows
                log.warning("%s %s: status not written (%s)", self.plural, name, status_message(exc))
            return
        self._written[name] = (generation, verdict)

    def _drop(self, name: str, reason: str) -> None:
        if name in self._owned:
            self._owned.discard(name)
            self._remove(name)
            log.info("%s %s removed: %s", self.plural, name, reason)
