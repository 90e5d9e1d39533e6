"""Pod discovery and aggregation into observations."""

from __future__ import annotations

from brixmesh.autoscaler.fleet import Fleet, RouterSignals
from brixmesh.autoscaler.observe import observe
from brixmesh.autoscaler.spec import parse_spec
from brixmesh.common.messages import PodEvent, PodInfo, PodList, PodMetrics, PodStatus, RouterStats
from brixmesh.common.pod_watch import listed_events


def _info(name: str, role: str = "both") -> PodInfo:
    return PodInfo(pod=name, deployment="d", model="m", engine="sim", role=role, endpoint="http://e",  # type: ignore[arg-type]
                   metrics_url=f"http://e/{name}/metrics")  # fmt: skip


def _event(kind: str, name: str, role: str = "both") -> PodEvent:
    return PodEvent(kind=kind, pod=_info(name, role), ts=0.0)  # type: ignore[arg-type]


def _metrics(name: str, ts: float, running: float, stale: bool = False) -> PodMetrics:
    return PodMetrics(pod=name, model="m", deployment="d", ts=ts, stale=stale, running=running, waiting=1.0)


def test_lifecycle_and_late_events() -> None:
    fleet = Fleet()
    for event in (_event("added", "a"), _event("ready", "a"), _event("ready", "b"), _event("draining", "b")):
        fleet.apply(event)
    fleet.apply(_event("ready", "b"))  # late duplicate must not resurrect a draining pod
    assert {p.pod: fleet.pods[p.pod].state for p in fleet.scrape_targets()} == {"a": "ready", "b": "draining"}
    fleet.apply(_event("removed", "b"))
    assert list(fleet.pods) == ["a"] and fleet.models == {"d": "m"}


def test_pod_list_cannot_resurrect_a_draining_pod() -> None:
    fleet = Fleet()
    fleet.apply(_event("draining", "a"))
    listing = PodList(ts=0.0, pods=[
        PodStatus(pod=_info("a"), phase="ready", ready=True, created_at=0, phase_since=0),
        PodStatus(pod=_info("b"), phase="starting", ready=False, created_at=0, phase_since=0),
        PodStatus(pod=_info("c"), phase="exited", ready=False, created_at=0, phase_since=0),
    ])  # fmt: skip
    for event in listed_events(listing):
        fleet.apply(event)
    assert {name: e.state for name, e in fleet.pods.items()} == {"a": "draining", "b": "added"}


def test_observe_sums_fresh_metrics_of_the_targeted_role_only() -> None:
    fleet = Fleet()
    for event in (_event("ready", "p1", "prefill"), _event("ready", "p2", "prefill"), _event("ready", "p3", "prefill"),
                  _event("ready", "d1", "decode"), _event("added", "p4", "prefill")):  # fmt: skip
        fleet.apply(event)
    fleet.record(_metrics("p1", ts=100.0, running=3))
    fleet.record(_metrics("p2", ts=100.0, running=5, stale=True))
    fleet.record(_metrics("p3", ts=90.0, running=7))  # too old
    fleet.record(_metrics("d1", ts=100.0, running=11))
    routers = RouterSignals()
    routers.record(RouterStats(router="r", model="m", ts=100.0, window_s=1.0, arrivals=6, completions=0, failures=0,
                               in_flight=2, queued=1, prompt_tokens=0, completion_tokens=0))  # fmt: skip
    spec = parse_spec({"name": "a", "deployment": "d", "role": "prefill", "metrics": [
        {"metric": "demand", "target": 1}, {"source": "router", "metric": "arrival_rate", "target": 1}]})  # fmt: skip
    obs = observe(spec, fleet, routers, 100.5, max_metrics_age_s=2.0)
    assert obs.totals == {"pod:demand": 4.0, "router:arrival_rate": 6.0}
    assert (obs.live_pods, obs.ready_pods, obs.router_demand) == (4, 3, 9.0)
    assert observe(spec, fleet, routers, 200.0, max_metrics_age_s=2.0).totals == {}  # everything expired
