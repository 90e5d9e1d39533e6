"""Router replicas mirror each other's in-flight counts; when one is SIGKILLed (no completions, no goodbye),
the others drop its counts once its lease ends instead of routing around phantom load for the per-request
TTL."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx

from brixmesh.common.servers import NatsServer
from tests.engine_sim.sim_engine import sim_engine
from tests.router.harness import MODEL, endpoints_file, metric_value, router_process
from tests.waiting import eventually

HEARTBEAT_S = 0.5
STREAM = {"model": MODEL, "prompt": "hello", "max_tokens": 60, "ignore_eos": True, "stream": True}


async def _metric(client: httpx.AsyncClient, url: str, name: str, **labels: str) -> float:
    return metric_value((await client.get(f"{url}/metrics")).text, name, **labels)


async def test_counts_mirrored_from_a_killed_replica_are_dropped_after_its_lease(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    stall = ["--fault-stall-after-tokens", "1", "--fault-stall-seconds", "600"]  # held until the engine stops
    with sim_engine(stall, replicas=2, kv_events=False) as engines:
        path = endpoints_file(tmp_path, engines.urls)
        settings = {"heartbeat_interval_s": HEARTBEAT_S, "inflight_ttl_s": 900}
        with (
            router_process(fresh_nats_server.url, endpoints=path, **settings) as doomed,
            router_process(fresh_nats_server.url, endpoints=path, **settings) as survivor,
        ):
            async with httpx.AsyncClient(timeout=30) as client:
                await eventually(lambda: _metric(client, survivor.url, "brixmesh_router_replicas"))
                with contextlib.suppress(httpx.HTTPError):  # the stream breaks when its router dies
                    async with client.stream("POST", f"{doomed.url}/v1/completions", json=STREAM) as held:
                        busy = held.headers["x-brixmesh-pod"]
                        await eventually(
                            lambda: _metric(client, survivor.url, "brixmesh_router_in_flight", pod=busy)
                        )
                        os.kill(doomed.process.pid, signal.SIGKILL)
                        expired = "brixmesh_router_replicas_expired_total"
                        await eventually(lambda: _metric(client, survivor.url, expired), 20)
                metrics = (await client.get(f"{survivor.url}/metrics")).text
                assert metric_value(metrics, "brixmesh_router_in_flight") == 0
                assert metric_value(metrics, "brixmesh_router_replicas") == 0
                assert metric_value(metrics, "brixmesh_router_replicas_expired_total") == 1
