"""Two router replicas' routing sync over a real NATS server: mirrored in-flight counts and prefixes, and the
shared/mirrored event counts that tell when they are in sync."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from brixmesh.common.bus import Bus
from brixmesh.common.servers import NatsServer
from brixmesh.router.metrics import SyncCollector
from brixmesh.router.routing.registry import RoutingEnv
from brixmesh.router.sync import RoutingSync
from tests.waiting import eventually


async def test_a_replica_mirrors_the_other_and_counts_what_it_applied(fresh_nats_server: NatsServer) -> None:
    buses = [await Bus.connect(fresh_nats_server.url, name=name) for name in ("router-a", "router-b")]
    try:
        a, b = (
            RoutingSync(RoutingEnv(), name, replica_lease_s=6.0) for name in ("router-a", "router-b")
        )
        await a.start(buses[0])
        await b.start(buses[1])
        a.routed("r1", "m", "pod-1", [11, 12])
        await eventually(lambda: b.env.load.count("pod-1") == 1)
        matched = b.env.prefix_index.match([11, 12], ["pod-1", "pod-2"], time.monotonic())
        assert matched == {"pod-1": 2, "pod-2": 0}
        a.done("r1", "m", "pod-1")
        await eventually(lambda: b.mirrored == 2)
        assert b.env.load.counts() == {} and a.shared == 2
        assert (a.mirrored, b.shared) == (0, 0)  # a replica's own events come back to it and are skipped

        registry = CollectorRegistry()
        registry.register(SyncCollector(b))
        assert registry.get_sample_value("brixmesh_router_sync_events_total", {"direction": "mirrored"}) == 2
        assert registry.get_sample_value("brixmesh_router_sync_events_total", {"direction": "shared"}) == 0
    finally:
        for bus in buses:
            await bus.close()
