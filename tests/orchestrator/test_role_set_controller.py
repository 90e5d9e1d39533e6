"""The orchestrator's desired state for role-set deployments: role generations, role-targeted decisions,
role-set readiness in its status, and restarts (against an in-memory backend)."""

from __future__ import annotations

import json
from pathlib import Path

from brixmesh.orchestrator.controller import Orchestrator
from brixmesh.orchestrator.spec import parse_spec
from brixmesh.orchestrator.state import deployment_records
from brixmesh.orchestrator.status import deployment_status
from tests.orchestrator.test_controller import NOW, MemoryBackend, decision

NIXL = {"kv_connector": "NixlConnector", "kv_role": "kv_producer"}


def pd_spec(mode: str = "replica", decode_args: tuple[str, ...] = (), **fields: object) -> dict[str, object]:
    return {
        "name": "pd", "model": "m", "mode": mode, "update": {"role_order": "parallel"},
        "roles": [
            {"name": "prefill", "engine_args": ["--kv-transfer-config", json.dumps(NIXL)]},
            {"name": "decode", "replicas": 2, "engine_args": list(decode_args)},
        ],
        **fields,
    }  # fmt: skip


def make(state: Path | None = None) -> tuple[Orchestrator, MemoryBackend]:
    backend = MemoryBackend()
    store = deployment_records(state) if state is not None else None
    return Orchestrator(backend, decision_max_age_s=30, clock=lambda: NOW, store=store), backend


async def test_pods_carry_their_role_set_and_the_set_is_ready_only_with_all_roles() -> None:
    orchestrator, backend = make()
    orchestrator.apply(parse_spec(pd_spec(replicas=2)))
    await orchestrator.reconcile()
    infos = sorted((p.info.role_set, p.info.role, p.info.replica_index, p.info.kv_transfer)
                   for p in backend.pods.values())  # fmt: skip
    assert infos == [
        ("pd-0", "decode", 0, ""), ("pd-0", "decode", 1, ""), ("pd-0", "prefill", 0, "nixl"),
        ("pd-1", "decode", 0, ""), ("pd-1", "decode", 1, ""), ("pd-1", "prefill", 0, "nixl"),
    ]  # fmt: skip
    for pod in backend.pods.values():
        if pod.info.role_set == "pd-0" or pod.info.role == "decode":
            pod.phase = "ready"
    status = deployment_status(orchestrator, orchestrator.get("pd"), "me")
    assert (status.mode, status.desired_replicas, status.ready_replicas, status.pods) == ("replica", 2, 1, 6)
    assert [(s.name, s.ready) for s in status.role_sets] == [("pd-0", True), ("pd-1", False)]
    assert [(r.name, r.desired_replicas, r.ready_replicas) for r in status.roles] == [
        ("prefill", 2, 1), ("decode", 4, 4)
    ]  # fmt: skip


async def test_a_failed_pod_is_replaced_in_its_role_set() -> None:
    orchestrator, backend = make()
    orchestrator.apply(parse_spec(pd_spec()))
    await orchestrator.reconcile()
    prefill = next(p for p in backend.pods.values() if p.info.role == "prefill")
    prefill.phase = "exited"
    await orchestrator.reconcile()
    replacement = [p for p in backend.pods.values() if p.info.role == "prefill" and p.name != prefill.name]
    assert [(p.info.role_set, p.info.replica_index) for p in replacement] == [("pd-0", 0)]
    assert prefill.name in orchestrator.draining() or prefill.name not in backend.pods


def test_only_the_changed_role_gets_a_new_generation() -> None:
    orchestrator, _ = make()
    deployment, _ = orchestrator.apply(parse_spec(pd_spec()))
    assert (deployment.generation, deployment.role_generations) == (1, {"prefill": 1, "decode": 1})
    orchestrator.apply(parse_spec(pd_spec(decode_args=("--max-num-seqs", "4"))))
    assert (deployment.generation, deployment.role_generations) == (2, {"prefill": 1, "decode": 2})
    orchestrator.apply(parse_spec(pd_spec(decode_args=("--max-num-seqs", "4"), replicas=3)))
    assert (deployment.generation, deployment.replicas) == (2, 3)


def test_replica_mode_decisions_scale_role_sets_and_pool_mode_decisions_scale_one_role() -> None:
    orchestrator, _ = make()
    orchestrator.apply(parse_spec(pd_spec()))
    assert orchestrator.apply_decision(decision(3, NOW, deployment="pd", role="decode")) == "role_mismatch"
    assert orchestrator.apply_decision(decision(3, NOW, deployment="pd")) == "applied"
    assert orchestrator.get("pd").replicas == 3

    orchestrator.apply(parse_spec(pd_spec(mode="pool")))
    pool = orchestrator.get("pd")
    assert orchestrator.apply_decision(decision(5, NOW, deployment="pd", role="decode")) == "applied"
    assert orchestrator.apply_decision(decision(5, NOW - 1, deployment="pd", role="prefill")) == "applied"
    assert orchestrator.apply_decision(decision(6, NOW - 2, deployment="pd", role="decode")) == "stale"
    assert orchestrator.apply_decision(decision(6, NOW, deployment="pd", role="both")) == "role_mismatch"
    assert pool.role_replicas == {"prefill": 5, "decode": 5}
    status = deployment_status(orchestrator, pool, "me")
    assert [(r.name, r.desired_replicas, r.last_decision_ts) for r in status.roles] == [
        ("prefill", 5, NOW - 1), ("decode", 5, NOW)
    ]  # fmt: skip
    orchestrator.apply(parse_spec(pd_spec(mode="pool")))  # the same spec again keeps the autoscaled counts
    assert pool.role_replicas == {"prefill": 5, "decode": 5}


def test_role_state_survives_a_restart(tmp_path: Path) -> None:
    orchestrator, _ = make(tmp_path)
    orchestrator.apply(parse_spec(pd_spec(mode="pool")))
    orchestrator.apply(parse_spec(pd_spec(mode="pool", decode_args=("--max-num-seqs", "4"))))
    orchestrator.apply_decision(decision(4, NOW, deployment="pd", role="decode"))
    restarted, _ = make(tmp_path)
    restarted.restore()
    deployment = restarted.get("pd")
    assert deployment.role_generations == {"prefill": 1, "decode": 2}
    assert deployment.role_replicas == {"prefill": 1, "decode": 4}
    assert deployment.role_decisions["decode"].ts == NOW


async def test_switching_a_single_role_deployment_to_role_sets_replaces_its_pods() -> None:
    orchestrator, backend = make()
    orchestrator.apply(parse_spec({"name": "pd", "model": "m", "replicas": 1}))
    await orchestrator.reconcile()
    (legacy,) = backend.pods.values()
    legacy.phase = "ready"
    deployment, _ = orchestrator.apply(parse_spec(pd_spec()))
    assert deployment.role_generations == {"prefill": 2, "decode": 2}
    await orchestrator.reconcile()
    assert legacy.name not in orchestrator.draining() and len(backend.pods) == 4
    for pod in backend.pods.values():
        pod.phase = "ready"
    await orchestrator.reconcile()
    assert orchestrator.draining() == [legacy.name] or legacy.name not in backend.pods
