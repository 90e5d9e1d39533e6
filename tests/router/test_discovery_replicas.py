"""Discovery over NATS (pods.*, metrics.pods.*, pods.list), per-second RouterStats, and two router replicas
over the same NATS making the same least-request and prefix decisions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx

from brixmesh.common.bus import Bus
from brixmesh.common.messages import (
    PodEvent,
    PodInfo,
    PodList,
    PodListRequest,
    PodMetrics,
    PodStatus,
    RouterStats,
)
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import METRICS_PODS, PODS, PODS_LIST, ROUTER_STATS
from tests.engine_sim.sim_engine import SimEngine
from tests.router.harness import MODEL, endpoints_file, metric_value, router_process
from tests.waiting import eventually

BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 2, "ignore_eos": True}


def pod_info(name: str, url: str) -> PodInfo:
    return PodInfo(pod=name, deployment="tiny", model=MODEL, engine="sim", endpoint=url, adapters=["lora-a"])


async def publish(bus: Bus, kind: str, info: PodInfo) -> None:
    await bus.publish(
        PODS.format(kind="engine", deployment=info.deployment, pod=info.pod),
        PodEvent(kind=kind, pod=info, ts=time.time()),
    )  # type: ignore[arg-type]


async def pods_used(client: httpx.AsyncClient, url: str, n: int, **headers: str) -> set[str]:
    used = set()
    for _ in range(n):
        response = await client.post(f"{url}/v1/completions", json=BODY, headers=headers)
        assert response.status_code == 200, response.text
        used.add(response.headers["x-brixmesh-pod"])
    return used


async def test_pods_and_metrics_from_nats(nats_server: NatsServer, sims: SimEngine, bus: Bus) -> None:
    a, b = pod_info("nats-a", sims.urls[0]), pod_info("nats-b", sims.urls[1])
    with router_process(nats_server.url, cold_start_wait_s=0) as router:
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(f"{router.url}/v1/completions", json=BODY)).status_code == 404
            await publish(bus, "added", a)  # known but not ready yet: held, then 503
            await eventually(lambda: _status(client, router.url, 503))
            await publish(bus, "ready", a)
            await publish(bus, "ready", b)

            async def both_listed() -> bool:
                return len((await client.get(f"{router.url}/v1/models")).json()["data"]) == 2

            await eventually(lambda: _status(client, router.url, 200))
            await eventually(lambda: _uses(client, router.url, {"nats-a", "nats-b"}))
            await publish(bus, "draining", a)
            await eventually(lambda: _uses(client, router.url, {"nats-b"}))
            await publish(bus, "ready", a)
            for pod, usage in (("nats-a", 0.9), ("nats-b", 0.1)):
                await bus.publish(
                    METRICS_PODS.format(pod=pod),
                    PodMetrics(
                        pod=pod, model=MODEL, deployment="tiny", ts=time.time(), stale=False, kv_usage=usage
                    ),
                )
            await eventually(
                lambda: _uses(client, router.url, {"nats-b"}, **{"routing-strategy": "least-kv-cache"})
            )
            await publish(bus, "removed", b)
            await eventually(
                lambda: _uses(client, router.url, {"nats-a"}, **{"routing-strategy": "least-kv-cache"})
            )
            assert await both_listed()  # nats-a still serves the base model and the adapter


async def _status(client: httpx.AsyncClient, url: str, status: int) -> bool:
    return (await client.post(f"{url}/v1/completions", json=BODY)).status_code == status


async def _uses(client: httpx.AsyncClient, url: str, expected: set[str], **headers: str) -> bool:
    return await pods_used(client, url, 6, **headers) == expected


async def test_pod_list_bootstraps_a_new_router(nats_server: NatsServer, sims: SimEngine, bus: Bus) -> None:
    info = pod_info("listed", sims.urls[0])
    status = PodStatus(pod=info, phase="ready", ready=True, created_at=time.time(), phase_since=time.time())
    retired = PodInfo(
        pod="retired", deployment="old", model="retired-model", engine="sim", endpoint=sims.urls[1]
    )
    exited = PodStatus(pod=retired, phase="exited", ready=False, created_at=time.time(), phase_since=0.0)
    await bus.serve(
        PODS_LIST.template,
        PodListRequest,
        lambda _subject, _request: PodList(pods=[status, exited], ts=time.time(), orchestrator="test"),
    )
    with contextlib.ExitStack() as stack:  # started from a thread: this loop must stay free to answer
        router = await asyncio.to_thread(
            stack.enter_context, router_process(nats_server.url, cold_start_wait_s=0)
        )
        async with httpx.AsyncClient(timeout=10) as client:
            assert await pods_used(client, router.url, 2) == {"listed"}
            # an exited pod is not known at all: its model is unknown (404), not waited for (503)
            gone = await client.post(f"{router.url}/v1/completions", json={**BODY, "model": "retired-model"})
            assert gone.status_code == 404, gone.text


async def test_router_stats_every_interval(
    nats_server: NatsServer, sims: SimEngine, bus: Bus, tmp_path: Path
) -> None:
    records: list[RouterStats] = []
    await bus.subscribe(ROUTER_STATS.pattern(model=MODEL), RouterStats, lambda _s, r: records.append(r))
    with router_process(
        nats_server.url, endpoints=endpoints_file(tmp_path, sims.urls), stats_interval_s=0.2
    ) as router:
        async with httpx.AsyncClient(timeout=10) as client:
            await pods_used(client, router.url, 5)
            await eventually(lambda: _sum(records, "completions", 5))
    assert sum(r.arrivals for r in records) == 5 and sum(r.failures for r in records) == 0
    assert sum(r.completion_tokens for r in records) == 10 and all(0 < r.window_s < 1 for r in records)


async def _in_flight_only(client: httpx.AsyncClient, url: str, pod: str) -> bool:
    metrics = (await client.get(f"{url}/metrics")).text
    return (
        metric_value(metrics, "brixmesh_router_in_flight")
        == 1
        == metric_value(metrics, "brixmesh_router_in_flight", pod=pod)
    )


async def _sum(records: list[RouterStats], field: str, expected: int) -> bool:
    return sum(getattr(r, field) for r in records) >= expected


SYNC_EVENTS = "brixmesh_router_sync_events_total"


async def _mirrored_everything(client: httpx.AsyncClient, source: str, mirror: str) -> bool:
    """``mirror`` has applied every routing event ``source`` shared (two replicas alone on their NATS server:
    nothing else to mirror)."""
    shared = metric_value((await client.get(f"{source}/metrics")).text, SYNC_EVENTS, direction="shared")
    mirrored = metric_value((await client.get(f"{mirror}/metrics")).text, SYNC_EVENTS, direction="mirrored")
    return shared == mirrored


async def test_two_replicas_share_least_request_and_prefix_decisions(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    from tests.engine_sim.sim_engine import sim_engine

    # a stream stalls after its first token for longer than the test runs: the held request below stays in
    # flight until the test lets it go, however slow the machine (non-streamed requests never stall)
    stall = ["--fault-stall-after-tokens", "1", "--fault-stall-seconds", "600"]
    with sim_engine(stall, replicas=2, kv_events=False) as engines:
        path = endpoints_file(tmp_path, engines.urls)
        with (
            router_process(fresh_nats_server.url, endpoints=path) as first,
            router_process(fresh_nats_server.url, endpoints=path) as second,
        ):
            async with httpx.AsyncClient(timeout=30) as client:
                # least-request: a long request through the first replica makes the second avoid its pod
                async with client.stream(
                    "POST",
                    f"{first.url}/v1/completions",
                    json={**BODY, "max_tokens": 60, "ignore_eos": True, "stream": True},
                ) as held:
                    busy = held.headers["x-brixmesh-pod"]
                    for replica in (second, first):
                        # replicas share counts with a few ms of lag: wait until this one sees only the held one
                        await eventually(lambda url=replica.url: _in_flight_only(client, url, busy))
                        assert busy not in await pods_used(client, replica.url, 5)

                # prefix: whatever pod the first replica chose for a prefix, the second chooses too
                strategy = {"routing-strategy": "prefix-cache:3,least-request:1"}
                for topic in range(6):
                    prefix = f"You are assistant number {topic}. " * 12
                    chosen = await client.post(
                        f"{first.url}/v1/completions",
                        headers=strategy,
                        json={**BODY, "prompt": prefix + "first question"},
                    )
                    # the second replica must have that choice before it is asked (shared with some lag)
                    await eventually(lambda: _mirrored_everything(client, first.url, second.url))
                    for replica in (second, first):
                        follow = await client.post(
                            f"{replica.url}/v1/completions",
                            headers=strategy,
                            json={**BODY, "prompt": prefix + "another question"},
                        )
                        assert follow.headers["x-brixmesh-pod"] == chosen.headers["x-brixmesh-pod"]
