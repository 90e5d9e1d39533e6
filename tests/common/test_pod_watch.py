import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from brixmesh.common.bus import Bus, encode
from brixmesh.common.messages import PodEvent, PodInfo, PodList, PodListRequest, PodPhase, PodStatus
from brixmesh.common.pod_watch import LISTED, PodWatch, listed_events, watch_pods
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS, PODS_LIST

from tests.waiting import eventually


@pytest.fixture
async def buses(fresh_nats_server: NatsServer) -> AsyncIterator[tuple[Bus, Bus]]:
    """The orchestrator's side and the consumer's, on a server of their own (one ``pods.list`` answerer)."""
    orchestrator = await Bus.connect(fresh_nats_server.url, name="orchestrator")
    consumer = await Bus.connect(fresh_nats_server.url, name="consumer")
    yield orchestrator, consumer
    await consumer.close()
    await orchestrator.close()


def _info(name: str) -> PodInfo:
    return PodInfo(pod=name, deployment="d", model="m", engine="sim", endpoint=f"http://{name}")


def _status(name: str, phase: PodPhase) -> PodStatus:
    return PodStatus(pod=_info(name), phase=phase, ready=phase == "ready", created_at=0.0, phase_since=0.0)


def _listing(*pods: tuple[str, PodPhase], lease_s: float = 0.0) -> PodList:
    return PodList(pods=[_status(name, phase) for name, phase in pods], ts=5.0, lease_s=lease_s)


async def _event_from(bus: Bus, kind: str, name: str, lease_s: float = 0.0) -> None:
    event = PodEvent(kind=kind, pod=_info(name), ts=9.0, lease_s=lease_s)  # type: ignore[arg-type]
    await bus.publish(PODS.format(kind=kind, deployment="d", pod=name), event)


def test_listed_phases_become_the_events_that_reach_them() -> None:
    listing = _listing(("a", "ready"), ("b", "starting"), ("c", "restarting"), ("d", "crashloop"),
                       ("e", "draining"), ("f", "exited"))  # fmt: skip
    events = listed_events(listing)
    assert [(e.pod.pod, e.kind) for e in events] == [
        ("a", "ready"), ("b", "added"), ("c", "removed"), ("d", "removed"), ("e", "draining"),
        ("f", "removed"),
    ]  # fmt: skip
    assert {(e.ts, e.reason) for e in events} == {(5.0, LISTED)}


async def test_listing_is_delivered_before_watch_returns_then_events_follow(buses: tuple[Bus, Bus]) -> None:
    orchestrator, consumer = buses
    await orchestrator.serve(PODS_LIST.template, PodListRequest, lambda _s, _r: _listing(("a", "ready")))
    seen: list[tuple[str, str, str]] = []

    async def on_event(event: PodEvent) -> None:  # async handlers are awaited
        seen.append((event.pod.pod, event.kind, event.reason))

    assert (await watch_pods(consumer, on_event)).listed == 1
    assert seen == [("a", "ready", LISTED)]
    await _event_from(orchestrator, "removed", "a")
    await orchestrator.client.flush()
    await eventually(lambda: len(seen) == 2)
    assert seen == [("a", "ready", LISTED), ("a", "removed", "")]


async def test_without_an_orchestrator_events_still_arrive(buses: tuple[Bus, Bus]) -> None:
    publisher, consumer = buses
    seen: list[PodEvent] = []
    watch = await watch_pods(consumer, seen.append, list_timeout_s=0.2)  # sync handlers run inline
    assert watch.listed == 0
    await _event_from(publisher, "ready", "a")
    await publisher.client.flush()
    await eventually(lambda: seen)
    assert [(e.pod.pod, e.kind) for e in seen] == [("a", "ready")]


async def test_a_pod_heard_from_an_event_is_not_overwritten_by_the_older_listing(
    buses: tuple[Bus, Bus],
) -> None:
    orchestrator, consumer = buses
    seen: list[tuple[str, str]] = []
    heard_draining = asyncio.Event()

    def on_event(event: PodEvent) -> None:
        seen.append((event.pod.pod, event.kind))
        if event.kind == "draining":
            heard_draining.set()

    async def answer_after_a_newer_event(msg: Msg) -> None:
        # the listing was taken before "a" began draining; its event reaches the consumer first
        listing = _listing(("a", "ready"), ("b", "ready"))
        await _event_from(orchestrator, "draining", "a")
        await orchestrator.client.flush()
        await asyncio.wait_for(heard_draining.wait(), 5.0)
        await msg.respond(encode(listing))

    await orchestrator.client.subscribe(PODS_LIST.template, cb=answer_after_a_newer_event)
    await orchestrator.sync()
    assert (await watch_pods(consumer, on_event, list_timeout_s=5.0)).listed == 1
    assert seen == [("a", "draining"), ("b", "ready")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _dropped(registry: CollectorRegistry, cause: str) -> float:
    return registry.get_sample_value("brixmesh_pods_dropped_total", {"cause": cause}) or 0.0


async def test_a_pod_not_renewed_within_its_lease_is_removed_with_a_reason_and_counted(
    buses: tuple[Bus, Bus],
) -> None:
    orchestrator, consumer = buses
    clock, registry = FakeClock(), CollectorRegistry()
    seen: list[PodEvent] = []
    watch = PodWatch(consumer, seen.append, registry=registry, list_timeout_s=0.2, clock=clock)
    await watch.start()
    await _event_from(orchestrator, "ready", "a", lease_s=3.0)
    await _event_from(orchestrator, "ready", "b", lease_s=3.0)
    await eventually(lambda: len(seen) == 2)
    clock.now += 2.0
    await _event_from(orchestrator, "ready", "b", lease_s=3.0)  # b is re-announced, a is not
    await eventually(lambda: len(seen) == 3)
    assert await watch.expire(clock.now + 0.9) == 0
    assert await watch.expire(clock.now + 1.0) == 1
    assert seen[-1].kind == "removed" and seen[-1].pod.pod == "a"
    assert seen[-1].reason == "lease expired: not re-announced within 3 s"
    assert set(watch.held) == {"b"} and _dropped(registry, "lease_expired") == 1
    assert registry.get_sample_value("brixmesh_pod_leases") == 1
    await _event_from(orchestrator, "removed", "b")  # a removal ends the lease: nothing left to expire
    await eventually(lambda: not watch.held)
    assert await watch.expire(clock.now + 1e6) == 0 and _dropped(registry, "lease_expired") == 1


async def test_a_lost_removal_is_healed_by_the_lease(buses: tuple[Bus, Bus]) -> None:
    """Real time: the expiry loop drops a pod whose ``removed`` event never came, leases without one stay."""
    orchestrator, consumer = buses
    seen: list[PodEvent] = []
    watch = await watch_pods(consumer, seen.append, list_timeout_s=0.2)
    expiry = asyncio.get_running_loop().create_task(watch.expire_forever())
    try:
        await _event_from(orchestrator, "ready", "leased", lease_s=0.3)
        await _event_from(orchestrator, "ready", "old-orchestrator")  # no lease_s: never expires
        await eventually(lambda: [e.kind for e in seen if e.pod.pod == "leased"] == ["ready", "removed"])
        assert set(watch.held) == {"old-orchestrator"}
    finally:
        expiry.cancel()


async def test_a_resync_drops_held_pods_the_listing_no_longer_has(buses: tuple[Bus, Bus]) -> None:
    orchestrator, consumer = buses
    listing = [_listing(("a", "ready"), ("b", "ready"), lease_s=30.0)]
    await orchestrator.serve(PODS_LIST.template, PodListRequest, lambda _s, _r: listing[0])
    registry = CollectorRegistry()
    seen: list[PodEvent] = []
    watch = PodWatch(consumer, seen.append, registry=registry)
    assert await watch.start() == 2
    assert {name: watch.leases.deadline(name) is not None for name in watch.held} == {"a": True, "b": True}
    listing[0] = _listing(("a", "ready"), ("c", "starting"), lease_s=30.0)
    assert await watch.resync() == 2
    assert [(e.pod.pod, e.kind) for e in seen[2:]] == [("a", "ready"), ("c", "added"), ("b", "removed")]
    assert seen[-1].reason == "not in the orchestrator's pods.list answer"
    assert set(watch.held) == {"a", "c"} and "b" not in watch.leases
    assert _dropped(registry, "not_listed") == 1
    assert registry.get_sample_value("brixmesh_pod_resyncs_total") == 2


async def test_pods_changed_while_nats_was_down_are_resynced_after_the_reconnect(tmp_path: Path) -> None:
    """The orchestrator's pods change while the server is away (their events are lost); the consumer's
    resync after its reconnect brings it to the new listing."""
    server = NatsServer(tmp_path / "nats").start()
    port = int(server.url.rsplit(":", 1)[1])
    orchestrator = await Bus.connect(server.url, name="orchestrator")
    consumer = await Bus.connect(server.url, name="consumer")
    listing = [_listing(("a", "ready"), ("b", "ready"), lease_s=30.0)]
    await orchestrator.serve(PODS_LIST.template, PodListRequest, lambda _s, _r: listing[0])
    seen: list[PodEvent] = []
    watch = await watch_pods(consumer, seen.append)
    assert set(watch.held) == {"a", "b"}
    server.stop()
    listing[0] = _listing(("a", "draining"), ("c", "ready"), lease_s=30.0)
    restarted = NatsServer(tmp_path / "nats", port=port).start()
    try:
        await eventually(lambda: set(watch.held) == {"a", "c"}, 20)
        assert watch.held["a"].kind == "draining"
        dropped = "not in the orchestrator's pods.list answer"
        assert [e.reason for e in seen if e.pod.pod == "b"] == [LISTED, dropped]
    finally:
        await consumer.close()
        await orchestrator.close()
        restarted.stop()
