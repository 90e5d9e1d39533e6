"""The autoscaler's PodAutoscaler resources on the emulated API (tests/k8s/emulator.py): resources become
autoscalers, edits and deletions follow through the watch, a spec the model refuses keeps the last accepted
one, a relist after 410 drops what went meanwhile; and the autoscaler process serves them over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from brixmesh.autoscaler.registry import Autoscalers
from brixmesh.autoscaler.resources import pod_autoscaler_resources
from brixmesh.autoscaler.spec import PodAutoscalerSpec, parse_spec
from brixmesh.common.kube.api import Api
from brixmesh.common.kube.specs import ResourceSpecs
from brixmesh.common.servers import NatsServer
from tests.k8s.conftest import NAMESPACE
from tests.k8s.emulator import ApiServer
from tests.service_proc import service_process
from tests.waiting import eventually

PAS = ("brixmesh.io", "v1alpha1", NAMESPACE, "podautoscalers")
MERGE = "application/merge-patch+json"


def pod_autoscaler(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "brixmesh.io/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"deployment": name, "model": "tiny-llama", **spec},
    }


@pytest.fixture
async def synced(api: Api) -> AsyncIterator[tuple[ResourceSpecs[PodAutoscalerSpec], Autoscalers]]:
    autoscalers = Autoscalers()
    autoscalers.put(parse_spec({"name": "from-file", "deployment": "other"}))
    await api.custom.create_namespaced_custom_object(*PAS[:3], PAS[3], pod_autoscaler("chat", max_replicas=8))
    sync = pod_autoscaler_resources(api, NAMESPACE, autoscalers)
    task = asyncio.create_task(sync.run())
    await asyncio.wait_for(sync.wait_listed(), 10)
    yield sync, autoscalers
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def edit(api: Api, name: str, **spec: Any) -> None:
    await api.custom.patch_namespaced_custom_object(*PAS, name, {"spec": spec}, _content_type=MERGE)


async def accepted(api: Api, name: str) -> tuple[int, str, str]:
    """(observedGeneration, Accepted status, its message) from the resource's status."""
    status = (await api.custom.get_namespaced_custom_object(*PAS, name)).get("status") or {}
    [condition] = [c for c in status.get("conditions", []) if c["type"] == "Accepted"] or [{}]
    return status.get("observedGeneration", 0), condition.get("status", ""), condition.get("message", "")


async def _is(found: Any, expected: Any) -> bool:
    return await found == expected


def max_replicas(autoscalers: Autoscalers, name: str) -> int | None:
    policy = autoscalers.get(name)
    return policy.spec.max_replicas if policy is not None else None


async def test_resources_become_autoscalers_and_a_refused_edit_keeps_the_last_accepted_spec(
    api: Api, synced: tuple[ResourceSpecs[PodAutoscalerSpec], Autoscalers]
) -> None:
    sync, autoscalers = synced
    assert max_replicas(autoscalers, "chat") == 8  # listed before the watch
    assert await accepted(api, "chat") == (1, "True", "")
    await edit(api, "chat", max_replicas=4)
    await eventually(lambda: max_replicas(autoscalers, "chat") == 4)

    # valid for the CRD's schema, not for the model: refused, the autoscaler keeps its last accepted spec
    await edit(api, "chat", min_replicas=6)
    await eventually(lambda: "chat" in sync.refused)
    assert "min_replicas (6) > max_replicas (4)" in sync.refused["chat"]
    assert autoscalers.get("chat").spec.min_replicas == 1  # type: ignore[union-attr]

    async def refused_on_the_resource() -> bool:
        generation, status, message = await accepted(api, "chat")
        return (generation, status) == (3, "False") and "min_replicas (6) > max_replicas (4)" in message

    await eventually(refused_on_the_resource)
    await edit(api, "chat", max_replicas=9)
    await eventually(lambda: max_replicas(autoscalers, "chat") == 9)
    assert sync.refused == {} and autoscalers.get("chat").spec.min_replicas == 6  # type: ignore[union-attr]
    await eventually(lambda: _is(accepted(api, "chat"), (4, "True", "")))

    # a change beside the spec restarts nothing (the watch delivers events in order: "embed" comes after it)
    policy = autoscalers.get("chat")
    annotation = {"metadata": {"annotations": {"team": "search"}}}
    await api.custom.patch_namespaced_custom_object(*PAS, "chat", annotation, _content_type=MERGE)
    await api.custom.create_namespaced_custom_object(*PAS[:3], PAS[3], pod_autoscaler("embed"))
    await eventually(lambda: autoscalers.get("embed") is not None)
    assert autoscalers.get("chat") is policy
    await api.custom.delete_namespaced_custom_object(*PAS, "chat")
    await eventually(lambda: autoscalers.get("chat") is None)
    assert autoscalers.get("from-file") is not None, "one from a file is not the resources' to remove"


async def test_a_relist_after_410_drops_the_resources_deleted_while_the_watch_was_down(
    apiserver: tuple[ApiServer, str], api: Api, synced: tuple[ResourceSpecs[PodAutoscalerSpec], Autoscalers]
) -> None:
    emulator, _ = apiserver
    _sync, autoscalers = synced
    lists = emulator.list_counts["podautoscalers"]
    await emulator.end_watches(refuse=True)
    await api.custom.delete_namespaced_custom_object(*PAS, "chat")
    await api.custom.create_namespaced_custom_object(*PAS[:3], PAS[3], pod_autoscaler("embed"))
    emulator.compact()
    emulator.watches_refused = False
    await eventually(lambda: autoscalers.get("chat") is None and autoscalers.get("embed") is not None)
    assert emulator.list_counts["podautoscalers"] > lists
    assert autoscalers.get("from-file") is not None


async def test_the_autoscaler_process_serves_the_namespace_s_pod_autoscalers(
    apiserver: tuple[ApiServer, str], api: Api, nats_server: NatsServer, tmp_path: Path
) -> None:
    _emulator, url = apiserver
    await api.custom.create_namespaced_custom_object(*PAS[:3], PAS[3], pod_autoscaler("chat", max_replicas=3))
    settings = {"BRIXMESH_K8S_PODAUTOSCALERS": "true", "BRIXMESH_K8S_API_URL": url,
                "BRIXMESH_K8S_NAMESPACE": NAMESPACE}  # fmt: skip
    log = tmp_path / "autoscaler.log"
    async with service_process(
        "brixmesh.autoscaler", nats_server.url, log, settings, startup_timeout_s=60
    ) as service:

        async def listed() -> bool:
            async with httpx.AsyncClient() as client:
                found = (await client.get(f"{service.url}/v1/autoscalers")).json()["autoscalers"]
            return [(a["spec"]["name"], a["spec"]["max_replicas"]) for a in found] == [("chat", 3)]

        await eventually(listed, 20)
