"""The fault catalogue and the debounced policy (pure)."""

from __future__ import annotations

from brixmesh.gpu_doctor.catalogue import RULES, XID_RULES, rule_for
from brixmesh.gpu_doctor.policy import Policy
from brixmesh.gpu_doctor.signals import Signal


def xid(code: int, gpu: str = "0") -> Signal:
    return Signal("xid", gpu=gpu, value=code)


def test_xids_map_to_nvidias_immediate_actions() -> None:
    assert rule_for("xid", 79).action == "cordon_node"
    assert {rule_for("xid", code).action for code in (48, 64, 74, 95, 119, 120)} == {"replace_pod"}
    assert {rule_for("xid", code).action for code in (43, 94)} == {"restart_engine"}
    assert {rule_for("xid", code).action for code in (13, 31, 45, 63, 92)} == {"observe"}
    assert rule_for("xid", 9999).action == "observe"  # unknown: watched, not acted on
    assert rule_for("no_such_signal", 1) is None
    assert all(rule.meaning.startswith(f"Xid {code}:") for code, rule in XID_RULES.items())


def test_every_fault_class_has_an_entry() -> None:
    for kind in ("gpu_lost", "ecc_uncorrected", "ecc_corrected", "row_remap_failure", "throttle_hw",
                 "throttle_thermal", "nvlink_errors", "nvlink_recovery", "pcie_replays", "probe_failures",
                 "step_time_regression", "canary_mismatch"):
        assert kind in RULES


def test_one_off_events_act_at_once_and_once() -> None:
    policy = Policy()
    [verdict] = policy.evaluate([xid(48)], now=0.0)
    assert (verdict.action, verdict.held_back) == ("replace_pod", False)
    # the same event seen again at the next polls is the same episode
    assert policy.evaluate([xid(48)], now=1.0) == []
    assert policy.evaluate([xid(48)], now=2.0) == []


def test_counters_below_their_threshold_are_nothing() -> None:
    policy = Policy()
    assert policy.evaluate([Signal("ecc_corrected", gpu="0", value=99)], now=0.0) == []
    assert policy.evaluate([Signal("probe_failures", pod="p", value=2)], now=0.0) == []
    [verdict] = policy.evaluate([Signal("probe_failures", pod="p", value=3)], now=1.0)
    assert verdict.action == "restart_engine"


def test_a_state_acts_only_after_it_held_for_its_hold_time() -> None:
    policy = Policy(gap_polls=0, hold_scale=0.1)  # throttle_hw holds 30 s -> 3 s
    throttled = Signal("throttle_hw", gpu="1")
    for t in (0.0, 1.0, 2.0):
        assert policy.evaluate([throttled], now=t) == []
    [verdict] = policy.evaluate([throttled], now=3.0)
    assert verdict.action == "replace_pod" and verdict.first_seen == 0.0 and verdict.count == 4


def test_a_state_flapping_faster_than_its_hold_never_acts() -> None:
    policy = Policy(gap_polls=0, hold_scale=0.1)
    throttled = Signal("throttle_hw", gpu="1")
    t = 0.0
    for _ in range(20):  # 2 s on, 2 s off, a poll a second
        for signals in ([throttled], [throttled], [], []):
            assert policy.evaluate(signals, now=t) == []
            t += 1.0


def test_a_flapping_fault_does_not_replace_again_within_the_cooldown() -> None:
    policy = Policy(cooldown_s=60.0, gap_polls=0)
    actions = []
    for t in range(0, 120):  # Xid 95 every 10 s for two minutes, a poll a second
        found = policy.evaluate([xid(95)] if t % 10 == 0 else [], now=float(t))
        actions += [(t, v.action, v.held_back) for v in found]
    taken = [(t, action) for t, action, held in actions if not held]
    assert taken == [(0, "replace_pod"), (70, "replace_pod")]  # once per cooldown
    assert all(action == "observe" for _, action, held in actions if held)
    held = policy.evaluate([xid(95)], now=125.0)[0]
    assert "held back: replace_pod of this gpu" in held.reason


def test_a_restart_that_does_not_cure_escalates_to_a_replacement() -> None:
    policy = Policy(cooldown_s=60.0, gap_polls=0)
    assert [v.action for v in policy.evaluate([xid(94)], now=0.0)] == ["restart_engine"]
    policy.evaluate([], now=10.0)
    [again] = policy.evaluate([xid(94)], now=20.0)
    assert again.action == "replace_pod" and "escalated" in again.reason
    policy.evaluate([], now=30.0)
    [third] = policy.evaluate([xid(94)], now=40.0)
    assert third.held_back and third.action == "observe"


def test_a_higher_action_is_not_held_back_by_a_lower_one() -> None:
    policy = Policy(cooldown_s=60.0)
    policy.evaluate([xid(48)], now=0.0)
    [lost] = policy.evaluate([Signal("gpu_lost", gpu="0")], now=5.0)
    assert lost.action == "cordon_node"


def test_targets_are_independent() -> None:
    policy = Policy(cooldown_s=60.0)
    verdicts = policy.evaluate([xid(48, "0"), xid(48, "1")], now=0.0)
    assert [(v.signal.gpu, v.action) for v in verdicts] == [("0", "replace_pod"), ("1", "replace_pod")]


def test_memory_stays_bounded_once_signals_stop() -> None:
    policy = Policy(cooldown_s=10.0)
    assert len(policy.evaluate([xid(48, str(gpu)) for gpu in range(50)], now=0.0)) == 50
    for t in (100.0, 101.0, 102.0, 103.0):
        policy.evaluate([], now=t)
    assert not policy._episodes and not policy._targets


def test_slow_polls_do_not_split_an_episode() -> None:
    policy = Policy(hold_scale=0.1)  # throttle_hw: 3 s
    throttled = Signal("throttle_hw", gpu="0")
    assert policy.evaluate([throttled], now=0.0) == []
    assert policy.evaluate([throttled], now=2.5) == []  # a poll that took 2.5 s
    [verdict] = policy.evaluate([throttled], now=5.0)
    assert verdict.action == "replace_pod"


def test_tap_shows_why_a_pod_was_taken_out() -> None:
    import msgspec

    from brixmesh.cli.tap import describe, readable
    from brixmesh.common.messages import GpuDecision
    from brixmesh.common.subjects import GPU_DECISIONS

    decision = GpuDecision(
        decision_id="d1", node="node-a", gpu="3", pods=["chat-1a2b3"], action="replace_pod", severity="critical",
        signal="xid", value=48, reason="Xid 48: double-bit ECC error; the GPU needs a reset",
        evidence={"source": "nvml", "temperature_c": "71"}, ts=1.0,
    )  # fmt: skip
    schema, body = describe(GPU_DECISIONS.format(node="node-a"), msgspec.msgpack.encode(decision))
    line = readable(body)
    assert schema == "GpuDecision"
    assert "action=replace_pod" in line and "pods=[chat-1a2b3]" in line and "double-bit ECC" in line
    assert "source=nvml" in line
