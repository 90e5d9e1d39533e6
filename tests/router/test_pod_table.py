"""The pod table fed by pod events and the orchestrator's listing (as :mod:`brixmesh.common.pod_watch`
delivers it): every listed phase ends in the right state, exited pods end removed."""

from __future__ import annotations

from brixmesh.common.messages import PodEvent, PodInfo, PodList, PodMetrics, PodPhase, PodStatus
from brixmesh.common.pod_watch import listed_events
from brixmesh.router.discovery.pod_table import PodTable


def info(name: str, model: str = "m") -> PodInfo:
    return PodInfo(pod=name, deployment="d", model=model, engine="sim", endpoint=f"http://{name}/")


def listing(*pods: tuple[str, PodPhase]) -> PodList:
    statuses = [
        PodStatus(pod=info(name), phase=phase, ready=phase == "ready", created_at=0.0, phase_since=0.0)
        for name, phase in pods
    ]
    return PodList(pods=statuses, ts=1.0)


def apply_listing(table: PodTable, *pods: tuple[str, PodPhase]) -> None:
    for event in listed_events(listing(*pods)):
        table.apply(event)


def test_listed_pods_reach_their_listed_state_and_ones_not_running_are_not_added() -> None:
    table = PodTable()
    apply_listing(
        table, ("a", "ready"), ("b", "starting"), ("c", "crashloop"), ("d", "draining"), ("e", "exited")
    )
    assert {name: endpoint.state for name, endpoint in table.endpoints.items()} == {
        "a": "ready", "b": "added", "d": "draining",
    }  # fmt: skip
    assert set(table.infos) == {"a", "b", "d"}
    assert table.models() == {"m": None} and table.base_model_of("m") == "m"


def test_a_known_pod_listed_as_exited_is_removed_and_listeners_hear_of_it() -> None:
    table = PodTable()
    removed: list[str] = []
    table.on_removed(removed.append)
    table.apply(PodEvent(kind="ready", pod=info("a", model="only-on-a"), ts=0.0))
    apply_listing(table, ("a", "exited"))
    assert table.endpoints == {} and table.infos == {} and removed == ["a"]
    assert table.base_model_of("only-on-a") is None  # a request for it is unknown (404), not held


def test_metrics_of_a_pod_removed_before_its_first_event_are_dropped() -> None:
    table = PodTable()
    table.apply_metrics(PodMetrics(pod="a", model="m", deployment="d", ts=0.0, stale=False, kv_usage=0.5))
    apply_listing(table, ("a", "exited"))
    table.apply(PodEvent(kind="ready", pod=info("a"), ts=2.0))  # a new pod under the same name
    assert table.endpoints["a"].metrics is None
