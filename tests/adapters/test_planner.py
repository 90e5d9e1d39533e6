"""Placement and density as pure logic."""

from brixmesh.adapter_manager.demand import DemandTracker
from brixmesh.adapter_manager.planner import PodView, Want, demand_replicas, place


def pods(*names: str, capacity: int = 2, model: str = "base", **kw: float) -> list[PodView]:
    return [PodView(name=n, model=model, capacity=capacity, **kw) for n in names]


def want(name: str, **kw: object) -> Want:
    defaults: dict[str, object] = dict(
        base_model="base", replicas=1, min_replicas=None, policy="least-adapters"
    )
    return Want(name=name, **{**defaults, **kw})  # type: ignore[arg-type]


def test_least_adapters_spreads_and_bin_pack_packs() -> None:
    spread = place([want("a"), want("b")], pods("p1", "p2"), {}, {})
    assert spread.pods == {"a": ["p1"], "b": ["p2"]}
    packed = place([want("a", policy="bin-pack"), want("b", policy="bin-pack")], pods("p1", "p2"), {}, {})
    assert packed.pods["a"] == packed.pods["b"]


def test_latency_aware_picks_the_least_loaded_pod() -> None:
    fleet = [PodView("busy", "base", 2, load=9.0), PodView("idle", "base", 2, load=0.0)]
    assert place([want("a", policy="latency-aware")], fleet, {}, {}).pods == {"a": ["idle"]}


def test_all_replicas_only_on_pods_of_the_base_model_with_room_and_rank() -> None:
    fleet = [*pods("p1", "p2"), PodView("other", "other-model", 2), PodView("small", "base", 2, max_rank=8)]
    plan = place([want("a", replicas="all", rank=16)], fleet, {}, {})
    assert plan.pods == {"a": ["p1", "p2"]}


def test_capacity_goes_to_the_hottest_adapters_and_the_rest_is_short() -> None:
    plan = place([want("cold", demand=0.1), want("hot", demand=50.0)], pods("p1", capacity=1), {}, {})
    assert plan.pods == {"hot": ["p1"], "cold": []}
    assert "full" in plan.short["cold"]


def test_current_placement_is_kept_and_refused_pods_are_avoided() -> None:
    plan = place([want("a")], pods("p1", "p2"), {"a": ["p2"]}, {})
    assert plan.pods == {"a": ["p2"]}
    moved = place([want("a")], pods("p1", "p2"), {"a": ["p2"]}, {"a": {"p2"}})
    assert moved.pods == {"a": ["p1"]}
    none_left = place([want("a")], pods("p1"), {}, {"a": {"p1"}})
    assert none_left.pods == {"a": []} and "refused by p1" in none_left.short["a"]


def test_density_follows_demand_between_min_and_replicas() -> None:
    fleet = pods("p1", "p2", "p3", "p4")
    hot = want("a", replicas=4, min_replicas=1, demand_replicas=demand_replicas(70.0, 20.0))
    assert len(place([hot], fleet, {}, {}).pods["a"]) == 4
    cold = want("a", replicas=4, min_replicas=1, demand_replicas=0)
    assert place([cold], fleet, {"a": ["p1", "p2", "p3"]}, {}).pods["a"] == ["p1"]
    idle = want("a", replicas=4, min_replicas=0, demand_replicas=0)
    assert place([idle], fleet, {"a": ["p1"]}, {}).pods["a"] == []
    unknown = want("a", replicas=4, min_replicas=1, demand_replicas=None)
    assert len(place([unknown], fleet, {"a": ["p1", "p2"]}, {}).pods["a"]) == 2


def test_demand_rate_window_and_held_requests() -> None:
    tracker = DemandTracker(window_s=10.0, started_at=0.0)
    assert not tracker.known(5.0) and tracker.known(10.0)
    tracker.observe("a", "r1", 1.0, arrivals=30, queued=0)
    tracker.observe("a", "r2", 2.0, arrivals=20, queued=2)
    assert tracker.rate("a", 5.0) == 5.0
    assert tracker.waiting("a", 5.0)
    assert tracker.rate("a", 20.0) == 0.0
    assert not tracker.waiting("a", 20.0)
