"""Pod consumers (real router, kv-index and autoscaler processes) resync with ``pods.list`` after their NATS
connection comes back: pods that changed while the server was away (their events lost) converge."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodInfo, PodList, PodListRequest, PodStatus
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS_LIST
from tests.router.harness import metric_value
from tests.service_proc import service_process
from tests.waiting import eventually

CONSUMERS = ("brixmesh.router", "brixmesh.kv_index", "brixmesh.autoscaler")


def _status(name: str) -> PodStatus:
    info = PodInfo(pod=name, deployment="d", model="m", engine="sim", endpoint=f"http://127.0.0.1:1/{name}")
    return PodStatus(pod=info, phase="ready", ready=True, created_at=0.0, phase_since=0.0)


async def test_consumers_resync_after_the_nats_server_restarts(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    port = int(server.url.rsplit(":", 1)[1])
    listed = [_status("a"), _status("b")]
    orchestrator = await Bus.connect(server.url, name="orchestrator")
    await orchestrator.serve(
        PODS_LIST.template, PodListRequest, lambda _s, _r: PodList(pods=listed, ts=time.time(), lease_s=60.0)
    )
    try:
        async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=10) as client:
            urls = [
                (await stack.enter_async_context(
                    service_process(module, server.url, tmp_path / f"{module}.log")
                )).url
                for module in CONSUMERS
            ]  # fmt: skip

            async def everywhere(name: str, value: float, **labels: str) -> bool:
                pages = [(await client.get(f"{url}/metrics")).text for url in urls]
                return [metric_value(page, name, **labels) for page in pages] == [value] * len(urls)

            assert await everywhere("brixmesh_pod_leases", 2)
            server.stop()
            listed[:] = [_status("a"), _status("c")]  # b went away, c came, while nobody could hear it
            server = NatsServer(tmp_path / "nats", port=port).start()
            await eventually(lambda: everywhere("brixmesh_pod_resyncs_total", 2), 30)
            assert await everywhere("brixmesh_pod_leases", 2)
            assert await everywhere("brixmesh_pods_dropped_total", 1, cause="not_listed")
            models = (await client.get(f"{urls[0]}/v1/models")).json()["data"]
            assert [m["id"] for m in models] == ["m"]
    finally:
        await orchestrator.close()
        server.stop()
