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


async def test_adapter_placements_add_to_announced_adapters_and_wake_held_requests() -> None:
    import asyncio

    from brixmesh.common.messages import AdapterPlacement, AdapterPlacements

    def table_of(*adapters: AdapterPlacement) -> AdapterPlacements:
        return AdapterPlacements(manager="am", ts=0.0, adapters=list(adapters))

    table = PodTable()
    static = PodInfo(
        pod="a", deployment="d", model="m", engine="sim", endpoint="http://a/", adapters=["fixed"]
    )
    table.apply(PodEvent(kind="ready", pod=static, ts=0.0))
    table.apply(PodEvent(kind="ready", pod=info("b"), ts=0.0))
    table.apply_placements(table_of(
        AdapterPlacement(name="x", base_model="m", phase="Loading"),
        AdapterPlacement(name="bad", base_model="m", phase="Failed", reason="wrong base model"),
    ))  # fmt: skip
    assert table.base_model_of("x") == "m" and table.base_model_of("bad") is None
    waiter = asyncio.create_task(table.wait_ready("x", 5.0))
    await asyncio.sleep(0)
    table.apply_placements(table_of(AdapterPlacement(name="x", base_model="m", phase="Running", pods=["b"])))
    assert await waiter
    assert table.endpoints["b"].adapters == {"x"} and table.endpoints["a"].adapters == {"fixed"}
    table.apply(PodEvent(kind="ready", pod=info("b"), ts=1.0))  # a re-announce keeps the placed adapters
    assert table.endpoints["b"].serves("x")
    table.apply_placements(table_of())
    assert not table.endpoints["b"].serves("x") and table.endpoints["a"].serves("fixed")
    assert table.base_model_of("x") is None
