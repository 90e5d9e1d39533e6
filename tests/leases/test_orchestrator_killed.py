"""Every pod consumer (router, kv-index, autoscaler: real processes) drops the pods of an orchestrator that
was SIGKILLed: it announces no removal, its leases run out, no ghost pod is left anywhere."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx

from brixmesh.common.servers import NatsServer
from tests.engine_sim.sim_engine import sim_engine
from tests.orchestrator.orchestrator_proc import run_orchestrator
from tests.router.harness import metric_value
from tests.service_proc import service_process
from tests.waiting import eventually

ANNOUNCE_INTERVAL_S = 0.5
LEASE_S = 3 * ANNOUNCE_INTERVAL_S
CONSUMERS = ("brixmesh.router", "brixmesh.kv_index", "brixmesh.autoscaler")


async def _metric(client: httpx.AsyncClient, url: str, name: str, **labels: str) -> float:
    return metric_value((await client.get(f"{url}/metrics")).text, name, **labels)


async def test_pods_of_a_killed_orchestrator_expire_in_every_consumer(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = {"BRIXMESH_ANNOUNCE_INTERVAL_S": str(ANNOUNCE_INTERVAL_S)}
    with sim_engine() as engine:
        async with (
            run_orchestrator(fresh_nats_server.url, tmp_path, env=settings) as orch,
            httpx.AsyncClient(timeout=10) as client,
            contextlib.AsyncExitStack() as consumers,
        ):  # fmt: skip
            external = {"url": engine.base_url, "kv_events": engine.kv_events_endpoint,
                        "kv_replay": engine.kv_replay_endpoint}  # fmt: skip
            spec = {"model": "tiny-llama", "engine": "sim", "external": [external], "block_size": 32}
            assert (await orch.http.put("/v1/deployments/outside", json=spec)).status_code == 201
            urls = [
                (await consumers.enter_async_context(
                    service_process(module, fresh_nats_server.url, tmp_path / f"{module}.log")
                )).url
                for module in CONSUMERS
            ]  # fmt: skip

            async def every_consumer(name: str, value: float, **labels: str) -> bool:
                found = [await _metric(client, url, name, **labels) for url in urls]
                return found == [value] * len(urls)

            await eventually(lambda: every_consumer("brixmesh_pod_leases", 1), 20)
            ready = await client.post(
                f"{urls[0]}/v1/completions", json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 1}
            )
            assert ready.status_code == 200, ready.text
            await eventually(lambda: _metric(client, urls[1], "brixmesh_kv_bridge_pods"))

            os.kill(orch.process.pid, signal.SIGKILL)  # announces nothing more, not even removals
            await eventually(lambda: every_consumer("brixmesh_pod_leases", 0), 10 * LEASE_S)
            assert await every_consumer("brixmesh_pods_dropped_total", 1, cause="lease_expired")
            assert await _metric(client, urls[1], "brixmesh_kv_bridge_pods") == 0
            assert (await client.get(f"{urls[0]}/v1/models")).json()["data"] == []  # no ghost pod routed to
