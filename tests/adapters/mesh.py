"""A stand-in orchestrator for adapter tests: announces given engines as ready pods on NATS (events and the
``pods.list`` answer), so the adapter-manager and routers learn them as in a mesh."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import httpx

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodInfo, PodList, PodListRequest, PodStatus
from brixmesh.common.subjects import PODS, PODS_LIST

from tests.service_proc import ADMIN_HEADERS


def pod_infos(urls: Sequence[str], model: str = "tiny-llama", **limits: int) -> list[PodInfo]:
    return [
        PodInfo(pod=f"pod-{i}", deployment="d", model=model, engine="vllm", endpoint=url, **limits)
        for i, url in enumerate(urls)
    ]


@contextlib.asynccontextmanager
async def announced(bus: Bus, pods: list[PodInfo]) -> AsyncIterator[Callable[[PodInfo], Awaitable[None]]]:
    """Announce ``pods``; yields ``reannounce(info)``, which replaces the pod of that name (a restarted
    engine) in the listing and announces it again."""

    async def announce(pod: PodInfo) -> None:
        subject = PODS.format(kind="ready", deployment=pod.deployment, pod=pod.pod)
        await bus.publish(subject, PodEvent(kind="ready", pod=pod, ts=time.time()))

    async def reannounce(pod: PodInfo) -> None:
        pods[:] = [pod if p.pod == pod.pod else p for p in pods]
        await announce(pod)

    def listing(_subject: str, _request: PodListRequest) -> PodList:
        now = time.time()
        statuses = [
            PodStatus(pod=p, phase="ready", ready=True, created_at=now, phase_since=now) for p in pods
        ]
        return PodList(pods=statuses, ts=now)

    subscription = await bus.serve(PODS_LIST.template, PodListRequest, listing)
    for pod in pods:
        await announce(pod)
    try:
        yield reannounce
    finally:
        await subscription.unsubscribe()


async def adapter(client: httpx.AsyncClient, manager_url: str, name: str) -> dict:
    return (await client.get(f"{manager_url}/adapters/{name}")).json()


async def register(client: httpx.AsyncClient, manager_url: str, **spec: object) -> httpx.Response:
    return await client.post(f"{manager_url}/adapters", json=spec, headers=ADMIN_HEADERS)
