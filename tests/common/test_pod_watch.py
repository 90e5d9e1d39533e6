import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from brixmesh.common.bus import Bus, encode
from brixmesh.common.messages import PodEvent, PodInfo, PodList, PodListRequest, PodPhase, PodStatus
from brixmesh.common.pod_watch import LISTED, listed_events, watch_pods
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


def _listing(*pods: tuple[str, PodPhase]) -> PodList:
    return PodList(pods=[_status(name, phase) for name, phase in pods], ts=5.0)


async def _event_from(bus: Bus, kind: str, name: str) -> None:
    event = PodEvent(kind=kind, pod=_info(name), ts=9.0)  # type: ignore[arg-type]
    await bus.publish(PODS.format(kind=kind, deployment="d", pod=name), event)


def test_listed_phases_become_the_events_that_reach_them() -> None:
    listing = _listing(("a", "ready"), ("b", "starting"), ("c", "restarting"), ("d", "crashloop"),
                       ("e", "draining"), ("f", "exited"))  # fmt: skip
    events = listed_events(listing)
    assert [(e.pod.pod, e.kind) for e in events] == [
        ("a", "ready"), ("b", "added"), ("c", "added"), ("d", "added"), ("e", "draining"), ("f", "removed"),
    ]  # fmt: skip
    assert {(e.ts, e.reason) for e in events} == {(5.0, LISTED)}


async def test_listing_is_delivered_before_watch_returns_then_events_follow(buses: tuple[Bus, Bus]) -> None:
    orchestrator, consumer = buses
    await orchestrator.serve(PODS_LIST.template, PodListRequest, lambda _s, _r: _listing(("a", "ready")))
    seen: list[tuple[str, str, str]] = []

    async def on_event(event: PodEvent) -> None:  # async handlers are awaited
        seen.append((event.pod.pod, event.kind, event.reason))

    assert await watch_pods(consumer, on_event) == 1
    assert seen == [("a", "ready", LISTED)]
    await _event_from(orchestrator, "removed", "a")
    await orchestrator.client.flush()
    await eventually(lambda: len(seen) == 2)
    assert seen == [("a", "ready", LISTED), ("a", "removed", "")]


async def test_without_an_orchestrator_events_still_arrive(buses: tuple[Bus, Bus]) -> None:
    publisher, consumer = buses
    seen: list[PodEvent] = []
    assert await watch_pods(consumer, seen.append, list_timeout_s=0.2) == 0  # sync handlers run inline
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
    await orchestrator.client.flush()
    assert await watch_pods(consumer, on_event, list_timeout_s=5.0) == 1
    assert seen == [("a", "draining"), ("b", "ready")]
