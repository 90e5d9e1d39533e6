"""The fault catalogue: what each signal means and what to do about it. Pure data and one lookup.

Xid codes follow NVIDIA's Xid catalogue (docs.nvidia.com/deploy/xid-errors): its "immediate action"
buckets map onto our actions as RESTART_APP -> ``restart_engine`` (drain the engine, start it afresh, the
GPU may stay), RESET_GPU -> ``replace_pod`` (drain, cordon that GPU until an operator lifts it, replace the
pod on another GPU), and a GPU gone from the bus -> ``cordon_node`` (nothing new on the node until it is
rebooted). Errors an application causes itself (illegal address, page faults) are only observed: a restart
does not fix a bad kernel, and replacing the pod would move the bug to another GPU.

``threshold`` applies to the signal's value (an increase per poll for counters); ``hold_s`` is how long a
state must persist before the action (one-off events: 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from brixmesh.common.messages import GpuAction, GpuSeverity

ACTION_RANK: dict[GpuAction, int] = {"observe": 0, "restart_engine": 1, "replace_pod": 2, "cordon_node": 3}


@dataclass(frozen=True)
class Rule:
    meaning: str
    severity: GpuSeverity
    action: GpuAction
    threshold: float = 1.0
    hold_s: float = 0.0


XID_RULES: dict[int, Rule] = {
    13: Rule("Xid 13: graphics engine exception (usually the application's kernel)", "warning", "observe"),
    31: Rule("Xid 31: GPU memory page fault (usually the application's illegal address)", "warning",
             "observe"),
    43: Rule("Xid 43: GPU stopped processing (channel reset); restart the application", "critical",
             "restart_engine"),
    45: Rule("Xid 45: preemptive cleanup after earlier errors", "info", "observe"),
    48: Rule("Xid 48: double-bit ECC error; the GPU needs a reset", "critical", "replace_pod"),
    61: Rule("Xid 61: internal micro-controller breakpoint; the GPU needs a reset", "critical",
             "replace_pod"),
    62: Rule("Xid 62: internal micro-controller halt; the GPU needs a reset", "critical", "replace_pod"),
    63: Rule("Xid 63: ECC page retirement or row remapping recorded (applies at the next reset)", "warning",
             "observe"),
    64: Rule("Xid 64: ECC page retirement or row remapping failed; the GPU needs a reset and service",
             "critical", "replace_pod"),
    74: Rule("Xid 74: NVLink error; the GPU needs a reset", "critical", "replace_pod"),
    79: Rule("Xid 79: GPU has fallen off the bus; the node needs a reboot", "fatal", "cordon_node"),
    92: Rule("Xid 92: high single-bit ECC error rate", "warning", "observe"),
    94: Rule("Xid 94: contained ECC error; restart the application that hit it", "critical",
             "restart_engine"),
    95: Rule("Xid 95: uncontained ECC error; the GPU needs a reset", "critical", "replace_pod"),
    119: Rule("Xid 119: GSP RPC timeout; the GPU needs a reset", "critical", "replace_pod"),
    120: Rule("Xid 120: GSP error; the GPU needs a reset", "critical", "replace_pod"),
    140: Rule("Xid 140: unrecovered ECC error; the GPU needs a reset", "critical", "replace_pod"),
}
UNKNOWN_XID = Rule("Xid not in the catalogue", "warning", "observe")

RULES: dict[str, Rule] = {
    "gpu_lost": Rule("GPU is lost (does not answer the driver); the node needs a reboot", "fatal",
                     "cordon_node"),
    "ecc_uncorrected": Rule("uncorrected (double-bit) ECC errors in volatile memory", "critical",
                            "replace_pod"),
    "ecc_corrected": Rule("corrected (single-bit) ECC errors, 100 or more since the last poll", "warning",
                          "observe", threshold=100),
    "row_remap_failure": Rule("row remapping failed: memory cannot be repaired; the GPU needs service",
                              "critical", "replace_pod"),
    "memory_repair_pending": Rule("retired pages or remapped rows pending a GPU reset", "info", "observe"),
    "throttle_hw": Rule("hardware slowdown (thermal, power brake) for 30 s: the engine is a straggler",
                        "critical", "replace_pod", hold_s=30.0),
    "throttle_thermal": Rule("software thermal slowdown for 120 s", "warning", "replace_pod", hold_s=120.0),
    "throttle_power_cap": Rule("clocks held at the power cap for 60 s", "info", "observe", hold_s=60.0),
    "nvlink_errors": Rule("NVLink CRC or replay errors, 10 or more since the last poll", "warning", "observe",
                          threshold=10),
    "nvlink_recovery": Rule("NVLink recovery errors (a link went down)", "critical", "replace_pod"),
    "pcie_replays": Rule("PCIe replays, 100 or more since the last poll", "warning", "observe",
                         threshold=100),
    "probe_failures": Rule("engine health probe failed 3 times in a row", "critical", "restart_engine",
                           threshold=3),
    "step_time_regression": Rule("engine steps 2x slower than its own baseline for 10 s", "critical",
                                 "replace_pod", threshold=2.0, hold_s=10.0),
    "canary_mismatch": Rule("canary prompt at temperature 0 answered differently (silent data corruption)",
                            "critical", "replace_pod"),
}


def rule_for(kind: str, value: float) -> Rule | None:
    """The catalogue entry of a signal (an unknown Xid is observed), None for a kind it does not know."""
    if kind == "xid":
        return XID_RULES.get(int(value), UNKNOWN_XID)
    return RULES.get(kind)
