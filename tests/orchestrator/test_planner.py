"""Scale planning: start what is missing, drain not-ready then newest pods, surge rollouts."""

from __future__ import annotations

import pytest

from brixmesh.orchestrator.planner import PodView, plan_scale


def pod(name: str, created: float, ready: bool = True, generation: int = 1, draining: bool = False) -> PodView:
    return PodView(name=name, generation=generation, ready=ready, created_at=created, draining=draining)


def test_scale_up_from_zero_and_steady_state() -> None:
    assert plan_scale(3, 1, []).create == 3
    steady = plan_scale(2, 1, [pod("a", 1), pod("b", 2)])
    assert steady.empty


def test_scale_down_prefers_not_ready_then_newest() -> None:
    pods = [pod("old", 1), pod("new", 3), pod("starting", 2, ready=False), pod("mid", 2)]
    assert plan_scale(2, 1, pods).drain == ("starting", "new")
    assert plan_scale(0, 1, pods).create == 0
    assert set(plan_scale(0, 1, pods).drain) == {"old", "new", "starting", "mid"}


def test_draining_pods_do_not_count() -> None:
    plan = plan_scale(2, 1, [pod("a", 1), pod("b", 2, draining=True)])
    assert plan.create == 1 and plan.drain == ()


def test_rollout_keeps_outdated_pods_until_replacements_are_ready() -> None:
    old = [pod("o1", 1, generation=1), pod("o2", 2, generation=1)]
    started = plan_scale(2, 2, old)
    assert started.create == 2 and started.drain == ()
    one_ready = old + [pod("n1", 3, generation=2), pod("n2", 4, generation=2, ready=False)]
    assert plan_scale(2, 2, one_ready).drain == ("o2",)  # one replacement ready: retire one, the newest
    all_ready = old + [pod("n1", 3, generation=2), pod("n2", 4, generation=2)]
    assert set(plan_scale(2, 2, all_ready).drain) == {"o1", "o2"}


def test_negative_desired_is_a_bug() -> None:
    with pytest.raises(ValueError):
        plan_scale(-1, 1, [])
