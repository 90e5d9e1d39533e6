"""An autoscaler targeting one role of a pool-mode role-set deployment sees that role's counts."""

from __future__ import annotations

from brixmesh.autoscaler.observe import target_status
from brixmesh.common.messages import DeploymentStatus, RoleStatus


def pool_status(*roles: RoleStatus, mode: str = "pool") -> DeploymentStatus:
    return DeploymentStatus(
        deployment="pd", generation=1, desired_replicas=1, ready_replicas=1, pods=6, last_decision_ts=5.0,
        ts=10.0, mode=mode, roles=list(roles),
    )  # fmt: skip


PREFILL = RoleStatus(name="prefill", role="prefill", desired_replicas=2, ready_replicas=1, pods=2,
                     last_decision_ts=7.0)  # fmt: skip
DECODE = RoleStatus(name="decode", role="decode", desired_replicas=4, ready_replicas=4, pods=4)


def test_a_role_target_sees_its_roles_desired_pods_and_last_decision() -> None:
    seen = target_status(pool_status(PREFILL, DECODE), "prefill")
    assert seen is not None
    assert (seen.role, seen.desired_replicas, seen.ready_replicas, seen.pods, seen.last_decision_ts) == (
        "prefill", 2, 1, 2, 7.0
    )  # fmt: skip
    decode = target_status(pool_status(PREFILL, DECODE), "decode")
    assert decode is not None and decode.desired_replicas == 4


def test_whole_deployment_and_replica_mode_targets_see_the_deployment() -> None:
    status = pool_status(PREFILL, DECODE)
    assert target_status(status, None) is status
    replica = pool_status(PREFILL, DECODE, mode="replica")
    assert target_status(replica, "decode") is replica
    assert target_status(None, "decode") is None


def test_no_single_role_with_the_function_means_no_status() -> None:
    two_decodes = pool_status(DECODE, RoleStatus(name="decode-b", role="decode", desired_replicas=1,
                                                 ready_replicas=1, pods=1))  # fmt: skip
    assert target_status(two_decodes, "decode") is None
    assert target_status(pool_status(PREFILL, DECODE), "both") is None
