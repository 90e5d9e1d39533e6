"""The scaling algorithms and the policy around them, as pure functions of time and load."""

from __future__ import annotations

import itertools

import pytest
from brixmesh.autoscaler import algorithms
from brixmesh.autoscaler.algorithms import Bounds, KpaState, Tolerance
from brixmesh.autoscaler.policy import AutoscalerPolicy, Observation
from brixmesh.autoscaler.spec import parse_spec
from brixmesh.autoscaler.window import SlidingWindow
from brixmesh.common.messages import DeploymentStatus

TOL = Tolerance(up=0.1, down=0.1)


def test_window_mean_and_expiry() -> None:
    window = SlidingWindow(10.0)
    assert window.mean(0.0) is None
    for ts in range(10):
        window.add(float(ts), 1.0)
    window.add(10.0, 12.0)
    assert window.mean(10.0) == pytest.approx((9 * 1.0 + 12.0) / 10)  # ts 0 fell out
    assert window.max(10.0) == 12.0
    assert window.mean(30.0) is None


def test_hpa_tolerance_band() -> None:
    assert algorithms.hpa(4, 4.3, 4.3, TOL) == 4  # ratio 1.075: inside the band
    assert algorithms.hpa(4, 4.5, 4.5, TOL) == 5
    assert algorithms.hpa(4, 1.0, 1.0, TOL) == 1
    assert algorithms.hpa(0, 0.5, 0.5, TOL) == 1


def test_hpa_scale_down_is_stabilized_by_the_window_max() -> None:
    assert algorithms.hpa(6, 1.0, 4.2, TOL) == 5
    assert algorithms.hpa(6, 1.0, 9.0, TOL) == 6  # never up through the stabilization path


def test_kpa_panics_on_a_burst_and_never_scales_down_in_panic() -> None:
    state = KpaState()
    kw = {"panic_threshold": 2.0, "stable_window_s": 60.0, "tolerance": TOL}
    assert algorithms.kpa(2, stable_mean=2.5, panic_mean=5.0, now=0.0, state=state, **kw) == 5
    assert state.panicking
    # the burst ends: panic mode holds for a stable window and never goes down
    assert algorithms.kpa(5, stable_mean=1.0, panic_mean=1.0, now=30.0, state=state, **kw) == 5
    assert state.panicking
    assert algorithms.kpa(5, stable_mean=1.0, panic_mean=1.0, now=61.0, state=state, **kw) == 1
    assert not state.panicking


def test_kpa_a_new_burst_extends_the_panic() -> None:
    state = KpaState()
    kw = {"panic_threshold": 2.0, "stable_window_s": 60.0, "tolerance": TOL}
    algorithms.kpa(1, stable_mean=1.0, panic_mean=3.0, now=0.0, state=state, **kw)
    assert algorithms.kpa(2, stable_mean=2.0, panic_mean=4.0, now=50.0, state=state, **kw) == 4
    assert algorithms.kpa(4, stable_mean=1.0, panic_mean=1.0, now=100.0, state=state, **kw) == 4
    assert state.panicking
    assert algorithms.kpa(4, stable_mean=1.0, panic_mean=1.0, now=110.0, state=state, **kw) == 1


def test_kpa_stable_mode_follows_the_stable_mean_with_tolerance() -> None:
    state = KpaState()
    kw = {"panic_threshold": 2.0, "stable_window_s": 60.0, "tolerance": TOL}
    assert algorithms.kpa(4, stable_mean=4.2, panic_mean=4.3, now=0.0, state=state, **kw) == 4
    assert algorithms.kpa(4, stable_mean=5.5, panic_mean=6.0, now=1.0, state=state, **kw) == 6
    assert not state.panicking


def test_apa_asymmetric_band() -> None:
    wide_down = Tolerance(up=0.1, down=0.3)
    assert algorithms.apa(10, 8.0, wide_down) == 10  # 0.8 is inside 1 - 0.3
    assert algorithms.apa(10, 6.5, wide_down) == 7
    assert algorithms.apa(10, 11.5, wide_down) == 12


def test_bound_rate_caps_and_limits() -> None:
    bounds = Bounds(min_replicas=1, max_replicas=10, max_scale_up_rate=2.0, max_scale_down_rate=2.0)
    assert algorithms.bound(2, 9, bounds) == 4
    assert algorithms.bound(8, 1, bounds) == 4
    assert algorithms.bound(8, 30, bounds) == 10
    assert algorithms.bound(0, 5, bounds) == 1
    assert algorithms.bound(1, 0, bounds) == 1


def _policy(**overrides: object) -> AutoscalerPolicy:
    spec = {
        "name": "a", "deployment": "d", "model": "m", "strategy": "kpa", "max_replicas": 8,
        "metrics": [{"source": "pod", "metric": "demand", "target": 4}],
        "stable_window_s": 30, "panic_window_s": 3, "scale_down_cooldown_s": 10,
    }  # fmt: skip
    spec.update(overrides)
    return AutoscalerPolicy(parse_spec(spec))


def _run(policy: AutoscalerPolicy, start: float, end: float, demand: float, step: float = 0.5) -> list:
    decisions = []
    ts = start
    while ts < end:
        current = policy.current if policy.current is not None else 1
        obs = Observation(ts=ts, live_pods=current, ready_pods=current, totals={"pod:demand": demand})
        decision = policy.evaluate(obs)
        if decision is not None:
            decisions.append(decision)
        ts += step
    return decisions


@pytest.mark.parametrize("strategy", ["hpa", "kpa", "apa"])
def test_load_step_scales_up_fast_converges_and_then_stays(strategy: str) -> None:
    policy = _policy(strategy=strategy)
    assert _run(policy, 0.0, 30.0, demand=3.0) == []  # light load: one pod is right
    decisions = _run(policy, 30.0, 32.0, demand=20.0)
    assert decisions and decisions[0].desired_replicas > 1 and decisions[0].ts - 30.0 <= 2.0
    assert decisions[0].algorithm == strategy and "pod:demand" in decisions[0].reason
    _run(policy, 32.0, 60.0, demand=20.0)
    assert policy.current == 5
    assert _run(policy, 60.0, 120.0, demand=20.0) == []  # steady: no flapping


def test_no_decision_without_fresh_data() -> None:
    policy = _policy()
    obs = Observation(ts=0.0, live_pods=2, ready_pods=2, totals={})
    assert policy.evaluate(obs) is None
    assert len(policy.stable) == 0


def test_scale_down_waits_for_the_cooldown_and_is_rate_capped() -> None:
    policy = _policy(strategy="apa", max_replicas=8, scale_down_cooldown_s=10)
    _run(policy, 0.0, 10.0, demand=32.0)
    assert policy.current == 8
    decisions = _run(policy, 10.0, 60.0, demand=4.0)
    assert decisions[-1].desired_replicas == 1
    for decision in decisions:
        assert decision.desired_replicas >= decision.current_replicas // 2
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(decisions)]
    assert len(decisions) >= 3 and min(gaps) >= 10


def test_scale_from_zero_on_router_demand_at_once() -> None:
    policy = _policy(min_replicas=0, scale_to_zero=True, scale_up_cooldown_s=60)
    idle = Observation(ts=0.0, live_pods=0, ready_pods=0, totals={})
    assert policy.evaluate(idle) is None
    decision = policy.evaluate(Observation(ts=0.5, live_pods=0, ready_pods=0, totals={}, router_demand=3))
    assert decision is not None and decision.desired_replicas == 1 and decision.current_replicas == 0
    assert "scale from zero" in decision.reason


def test_scale_to_zero_when_idle() -> None:
    policy = _policy(min_replicas=0, scale_to_zero=True, strategy="apa", scale_down_cooldown_s=0)
    decisions = _run(policy, 0.0, 40.0, demand=0.0)
    assert decisions and decisions[-1].desired_replicas == 0
    assert decisions[0].ts >= 30.0  # not before the 30 s stable window is full


def test_highest_metric_source_wins() -> None:
    policy = _policy(strategy="hpa", metrics=[
        {"source": "pod", "metric": "demand", "target": 4},
        {"source": "router", "metric": "in_flight", "target": 2},
    ])  # fmt: skip
    for ts in (0.0, 1.0, 2.0):  # the 3 s panic window fills first
        warming = Observation(ts=ts, live_pods=1, ready_pods=1, totals={"pod:demand": 4.0})
        assert policy.evaluate(warming) is None
    obs = Observation(ts=3.0, live_pods=1, ready_pods=1, totals={"pod:demand": 4.0, "router:in_flight": 6.0})
    decision = policy.evaluate(obs)
    assert decision is not None and decision.desired_replicas == 2  # 3 wanted, rate cap 2x
    assert "router:in_flight" in decision.reason


def _observe(ts: float, demand: float, desired: int | None = 3) -> Observation:
    totals = {"pod:demand": demand}
    return Observation(ts=ts, live_pods=2, ready_pods=2, totals=totals, desired_replicas=desired)


def test_a_restarted_autoscaler_keeps_the_observed_count_until_its_windows_refill() -> None:
    idle = _policy(strategy="apa", scale_down_cooldown_s=0)  # stable window 30 s
    assert [idle.evaluate(_observe(ts * 0.5, demand=0.0)) for ts in range(60)] == [None] * 60
    assert idle.current == 3  # the orchestrator's desired replicas, not the 2 live pods
    down = idle.evaluate(_observe(30.0, demand=0.0))
    assert down is not None and (down.current_replicas, down.desired_replicas) == (3, 1)

    busy = _policy(strategy="apa")  # panic window 3 s
    assert [busy.evaluate(_observe(ts * 0.5, demand=40.0)) for ts in range(6)] == [None] * 6
    up = busy.evaluate(_observe(3.0, demand=40.0))
    assert up is not None and (up.current_replicas, up.desired_replicas) == (3, 6)


def _status(desired: int, last_decision_ts: float, **fields: object) -> DeploymentStatus:
    return DeploymentStatus(deployment="d", generation=1, desired_replicas=desired, ready_replicas=desired,
                            pods=desired, last_decision_ts=last_decision_ts, ts=0.0, **fields)  # fmt: skip


def test_the_decision_in_force_is_sent_again_until_the_orchestrator_shows_it() -> None:
    policy = _policy(strategy="apa")
    for ts in range(4):
        decision = policy.evaluate(_observe(float(ts), demand=40.0))
    assert decision is not None and decision.desired_replicas == 6 and not decision.resent
    assert policy.enforce(None, 3.5, refresh_s=10) is None  # no orchestrator reports the deployment

    lost = policy.enforce(_status(3, last_decision_ts=0.0), 3.5, refresh_s=10)
    assert lost is not None and lost.resent and (lost.ts, lost.desired_replicas) == (3.5, 6)
    assert lost.reason.startswith("re-sent (not acknowledged by the orchestrator): scale up 3->6")
    assert policy.enforce(_status(6, last_decision_ts=3.5), 4.0, refresh_s=10) is None  # applied

    by_hand = policy.enforce(_status(1, last_decision_ts=3.5), 4.5, refresh_s=10)
    assert by_hand is not None and by_hand.desired_replicas == 6
    assert "desired replicas were changed to 1" in by_hand.reason
    assert policy.enforce(_status(6, last_decision_ts=4.5), 10.0, refresh_s=10) is None
    refresh = policy.enforce(_status(6, last_decision_ts=4.5), 14.5, refresh_s=10)
    assert refresh is not None and refresh.reason.startswith("re-sent (refresh)")
    assert policy.enforce(_status(1, last_decision_ts=0.0, fixed_size=True), 15.0, refresh_s=10) is None
    assert policy.decisions == 1  # re-sends are not new decisions
