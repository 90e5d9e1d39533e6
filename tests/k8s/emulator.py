"""A Kubernetes API server for tests: kmock's emulator (a real HTTP server the real client talks to) with what
it lacks and a controller depends on, added the way kube-apiserver behaves:

- 422 for an object that fails its schema (built-in kinds: kubernetes-validate, strict; custom resources:
  the CRD's ``openAPIV3Schema``), on create and on patch (the patched result is validated);
- ``metadata.resourceVersion`` (one counter for all objects), ``uid``, ``generation`` (bumped by changes
  outside ``status``), ``creationTimestamp``;
- 409 for a patch carrying a ``resourceVersion`` that is no longer current (optimistic concurrency);
- watches that resume after a given ``resourceVersion`` (events replayed from a history), and 410 Gone for a
  version older than the history kept (:meth:`ApiServer.compact`), as a real server does after etcd
  compaction; list and watch honour ``labelSelector`` (equality terms).

Not emulated: controllers (no kubelet: tests set pod IPs and readiness), garbage collection of owned objects,
admission webhooks, CEL, strategic-merge list semantics (patches merge dicts and replace lists).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import jsonschema
import kubernetes_validate
from kmock import KubernetesEmulator, KubernetesError, Server, resource
from kmock._internal import aiobus, enums, parsing, rendering

from brixmesh.orchestrator.spec import merge_patch

KUBERNETES_VERSION = "1.34.0"
BUILT_IN_GROUPS = ("", "apps", "coordination.k8s.io")


def _lowercase_watch_flag() -> None:
    """kubernetes_asyncio sends ``watch=True``; kmock recognises only ``watch=true``."""
    original = parsing.guess_k8s
    if getattr(original, "_lowercased", False):
        return

    def guess_k8s(k8s: Any, method: Any, query: dict[str, str]) -> Any:
        if "watch" in query:
            query = {**query, "watch": query["watch"].lower()}
        return original(k8s, method, query)

    guess_k8s._lowercased = True  # type: ignore[attr-defined]
    parsing.guess_k8s = guess_k8s


_lowercase_watch_flag()


_END_OF_STREAM: dict[str, Any] = {"type": "end-of-stream"}


class _RecordingBus(aiobus.Bus[Any]):
    """Keeps every event (kmock's bus forgets them once streamed) so a watch can resume from a version."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, Any]] = []

    async def put(self, *items: Any) -> None:
        self.history.extend(copy.deepcopy(item) for item in items if item is not _END_OF_STREAM)
        await super().put(*items)


def json_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """A CRD's OpenAPI v3 schema as JSON schema (draft 7), with unknown fields refused as the API server does
    under strict field validation (kubectl's default)."""
    out = {key: value for key, value in openapi.items() if not key.startswith("x-kubernetes")}
    if openapi.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    if out.pop("exclusiveMinimum", False):
        out["exclusiveMinimum"] = out.pop("minimum")
    if out.pop("exclusiveMaximum", False):
        out["exclusiveMaximum"] = out.pop("maximum")
    if "properties" in out:
        out["properties"] = {name: json_schema(child) for name, child in out["properties"].items()}
        if "metadata" not in out["properties"] and not openapi.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), Mapping):
            out[key] = json_schema(out[key])
    return out


def _status_error(code: int, reason: str, message: str) -> KubernetesError:
    return KubernetesError(status=code, reason=reason, message=message, details={"causes": []})


def _selected(obj: Mapping[str, Any], selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _rv(obj: Mapping[str, Any]) -> int:
    return int(obj.get("metadata", {}).get("resourceVersion") or 0)


class ApiServer(KubernetesEmulator):
    """``async with ApiServer() as api, Server(api) as server:``; ``server.url`` is the API's base URL."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = _BusDict()
        self._versions = itertools.count(1)
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}
        self.oldest_version = 0
        """Watches from a version below this get 410 Gone (see :meth:`compact`)."""
        self.list_counts: collections.Counter[str] = collections.Counter()
        """List requests per resource plural (a relist shows here)."""
        self.refused_creates: dict[str, tuple[int, str]] = {}
        """plural -> (status, message) every create of it gets (a ResourceQuota, an admission webhook)."""
        self.watches_refused = False
        """While true, watch requests get an error (an API server restarting)."""
        self.before_patch: Callable[[rendering.Request], Awaitable[None]] | None = None
        """Called before a patch is applied (a test's concurrent writer, to provoke a 409)."""

    def add_crd(self, crd: Mapping[str, Any]) -> None:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for version in crd["spec"]["versions"]:
            self.resources[resource(group, version["name"], plural)] = {
                "kind": crd["spec"]["names"]["kind"], "namespaced": True,
                "subresources": sorted(version.get("subresources", {})),
            }  # fmt: skip
            self.schemas[(group, plural)] = json_schema(version["schema"]["openAPIV3Schema"])

    def compact(self) -> None:
        """Forget the history so far: a watch resuming from an older version gets 410 Gone."""
        self.oldest_version = next(self._versions)
        for bus in self._buses.values():
            bus.history.clear()

    async def end_watches(self, *, refuse: bool) -> None:
        """End every open watch stream (clients reconnect from their last version); with ``refuse``, new ones
        fail until :attr:`watches_refused` is set back to False."""
        self.watches_refused = refuse
        for bus in list(self._buses.values()):
            await bus.put(_END_OF_STREAM)

    def objects_of(self, plural: str) -> list[dict[str, Any]]:
        """The live objects of a resource (test assertions)."""
        return [
            obj.raw for (res, _, _), obj in self._objects.items() if res.plural == plural and not obj.deleted
        ]

    async def set_pod_status(self, namespace: str, name: str, *, ip: str, ready: bool) -> None:
        """What a kubelet would report for a running pod."""
        status = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
        await self.write(resource("", "v1", "pods"), namespace, name, {"status": status})

    async def write(self, res: resource, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A change from outside the client under test (another controller, a kubelet, a user)."""
        async with self._lock:
            obj = self._objects[res, namespace, name]
            obj.patch(
                {
                    **patch,
                    "metadata": {**patch.get("metadata", {}), "resourceVersion": str(next(self._versions))},
                }
            )
            await self._buses[res].put({"type": "MODIFIED", "object": obj.raw})

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is not None:
            try:
                await self._admit(request)
            except KubernetesError as exc:
                return await self._render_error(exc)
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)  # as kube-apiserver: the client reads a created object only from a 201
        return response

    async def _admit(self, request: rendering.Request) -> None:
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            refusal = self.refused_creates.get(request.resource.plural)
            if refusal is not None:
                raise _status_error(refusal[0], "Forbidden" if refusal[0] == 403 else "Invalid", refusal[1])
            self._validate(request.resource, request.data)
            metadata = request.data.setdefault("metadata", {})
            metadata.update(
                resourceVersion=str(next(self._versions)), uid=str(uuid.uuid4()), generation=1,
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )  # fmt: skip
        elif request.action == enums.action.UPDATE:
            content_type = request.headers.get("Content-Type", "")
            if "json-patch" in content_type and not isinstance(request.data, list):
                raise _status_error(400, "BadRequest", "json patch must be a list of operations")
            if "strategic-merge-patch" in content_type and request.resource.group not in BUILT_IN_GROUPS:
                raise _status_error(
                    415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources"
                )
            if self.before_patch is not None:
                await self.before_patch(request)
            async with self._lock:
                obj = self._object(request.resource, request.namespace, request.name)
                if obj is None or obj.deleted:
                    return  # kmock answers 404
                current = obj.raw
                expected = request.data.get("metadata", {}).get("resourceVersion")
                if expected is not None and str(expected) != str(_rv(current)):
                    raise _status_error(
                        409, "Conflict",
                        f"Operation cannot be fulfilled on {request.resource.plural} {request.name!r}: the "
                        "object has been modified; please apply your changes to the latest version and try "
                        "again",
                    )  # fmt: skip
                merged = merge_patch(current, request.data)
                self._validate(request.resource, merged)
                metadata = request.data.setdefault("metadata", {})
                metadata["resourceVersion"] = str(next(self._versions))
                if not request.url.path.endswith("/status") and merged.get("spec") != current.get("spec"):
                    metadata["generation"] = int(current["metadata"].get("generation", 1)) + 1
        elif request.action == enums.action.DELETE and request.name is not None:
            async with self._lock:
                obj = self._object(request.resource, request.namespace, request.name)
                if obj is not None and not obj.deleted:
                    obj.patch({"metadata": {"resourceVersion": str(next(self._versions))}})

    def _validate(self, res: Any, obj: Mapping[str, Any]) -> None:
        schema = self.schemas.get((res.group, res.plural))
        try:
            if schema is not None:
                body = {
                    key: value for key, value in obj.items() if key not in ("apiVersion", "kind", "metadata")
                }
                jsonschema.Draft7Validator(schema).validate(body)
            elif res.group in BUILT_IN_GROUPS:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            error = getattr(exc, "caused_by", exc)
            path = ".".join(str(part) for part in getattr(error, "absolute_path", ()))
            message = str(getattr(error, "message", error)).splitlines()[0]
            raise _status_error(
                422, "Invalid", f"{res.plural} is invalid: {path or '<root>'}: {message}"
            ) from None

    async def _serve_list(self, request: rendering.Request) -> Any:
        self.list_counts[request.resource.plural] += 1
        payload = await super()._serve_list(request)
        selector = request.params.get("labelSelector", "")
        payload["items"] = [item for item in payload["items"] if _selected(item, selector)]
        payload["metadata"]["resourceVersion"] = str(
            max([self.oldest_version, *map(_rv, self._all_objects())])
        )
        return payload

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        yield b""
        selector = request.params.get("labelSelector", "")
        since = int(request.params.get("resourceVersion") or 0)
        bus = self._buses[request.resource]
        if self.watches_refused:
            yield {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable",
                "code": 503, "message": "the API server is restarting",
            }}  # fmt: skip
            return
        if since and since < self.oldest_version:
            yield {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
                "message": f"too old resource version: {since} ({self.oldest_version})",
            }}  # fmt: skip
            return
        async with self._lock:
            mark = await bus.mark()
            if since:
                backlog = [event for event in bus.history if _rv(event["object"]) > since]
            else:
                backlog = [{"type": "ADDED", "object": obj.raw} for obj in self._live(request.resource)]
        for event in backlog:
            if self._wanted(request, event, selector):
                yield event
        async for event in bus.stream(since=mark):
            if event is _END_OF_STREAM:
                return
            if self._wanted(request, event, selector):
                yield event

    def _wanted(self, request: rendering.Request, event: Mapping[str, Any], selector: str) -> bool:
        namespace = event["object"].get("metadata", {}).get("namespace")
        return (request.namespace in (None, namespace)) and _selected(event["object"], selector)

    def _object(self, res: Any, namespace: str | None, name: str | None) -> Any:
        key = (res, namespace, name)
        return self._objects[key] if key in self._objects else None

    def _live(self, res: Any) -> list[Any]:
        return [obj for (r, _, _), obj in self._objects.items() if r == res and not obj.deleted]

    def _all_objects(self) -> list[dict[str, Any]]:
        return [obj.raw for obj in self._objects.values() if not obj.deleted]


class _BusDict(dict):  # type: ignore[type-arg]
    def __missing__(self, key: Any) -> _RecordingBus:
        bus = self[key] = _RecordingBus()
        return bus


@contextlib.asynccontextmanager
async def kubelet(emulator: ApiServer, namespace: str) -> AsyncIterator[None]:
    """What kubelets would report: every new pod gets an IP and passes its readiness probe."""
    addresses = (f"127.0.{i // 250}.{i % 250 + 2}" for i in itertools.count())

    async def run() -> None:
        while True:
            for pod in emulator.objects_of("pods"):
                if not (pod.get("status") or {}).get("podIP"):
                    await emulator.set_pod_status(
                        namespace, pod["metadata"]["name"], ip=next(addresses), ready=True
                    )
            await asyncio.sleep(0.05)

    task = asyncio.get_running_loop().create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def pods_of(emulator: ApiServer, deployment: str) -> list[dict[str, Any]]:
    return [
        pod for pod in emulator.objects_of("pods")
        if pod["metadata"]["labels"]["brixmesh.io/deployment"] == deployment
    ]  # fmt: skip


__all__ = ["ApiServer", "Server"]
