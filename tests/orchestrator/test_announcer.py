"""The periodic re-announce renews every pod consumers were told of, in the state they were told, with the
lease consumers hold it for."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodEventKind, PodInfo, PodListRequest
from brixmesh.common.subjects import PODS
from brixmesh.orchestrator.announcer import Announcer
from brixmesh.orchestrator.backend import Pod
from tests.waiting import eventually


class ListedPods:
    """The part of a backend the re-announce reads."""

    def __init__(self, pods: list[Pod]) -> None:
        self.pods = pods

    def list_pods(self, deployment: str | None = None) -> list[Pod]:
        return self.pods


def _pod(name: str, announced: PodEventKind | None, phase: str) -> Pod:
    info = PodInfo(pod=name, deployment="reannounce", model="m", engine="sim", endpoint=f"http://{name}")
    return Pod(info=info, generation=1, slot=0, phase=phase, announced=announced)  # type: ignore[arg-type]


async def test_every_announced_pod_is_renewed_in_the_state_consumers_hold(bus: Bus) -> None:
    backend = ListedPods([
        _pod("starting", "added", "starting"),
        _pod("serving", "ready", "ready"),
        _pod("going", "draining", "draining"),
        _pod("crashed", None, "restarting"),  # consumers were told "removed": not renewed
        _pod("probe-failing", None, "starting"),  # an external endpoint that stopped answering
    ])
    announcer = Announcer(
        bus, backend, CollectorRegistry(), interval_s=1.5, instance_id="t", lease_s=4.5  # type: ignore[arg-type]
    )
    heard: list[PodEvent] = []
    await bus.subscribe(PODS.pattern(deployment="reannounce"), PodEvent, lambda _s, e: heard.append(e))
    await announcer.reannounce()
    await bus.client.flush()
    await eventually(lambda: len(heard) == 3)
    assert sorted((e.pod.pod, e.kind) for e in heard) == [
        ("going", "draining"), ("serving", "ready"), ("starting", "added")
    ]
    assert {(e.reason, e.lease_s) for e in heard} == {("re-announce", 4.5)}
    assert announcer.pod_list("pods.list", PodListRequest()).lease_s == 4.5

    heard.clear()  # lifecycle changes carry the lease too; a removal holds nothing
    await announcer.publish(PodEvent(kind="ready", pod=backend.pods[0].info, ts=1.0, reason="probe passed"))
    await announcer.publish(PodEvent(kind="removed", pod=backend.pods[1].info, ts=1.0, reason="deleted"))
    await bus.client.flush()
    await eventually(lambda: len(heard) == 2)
    assert sorted((e.kind, e.lease_s) for e in heard) == [("ready", 4.5), ("removed", 0.0)]
