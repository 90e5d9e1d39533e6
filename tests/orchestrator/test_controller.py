"""Desired state and decisions of the orchestrator, against an in-memory backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from brixmesh.common.messages import GpuDecision, PodEvent, PodInfo, ScaleDecision
from brixmesh.orchestrator.backend import Pod
from brixmesh.orchestrator.controller import Orchestrator, UnknownDeployment
from brixmesh.orchestrator.cordons import Cordons
from brixmesh.orchestrator.local_backend import place_in_role_set
from brixmesh.orchestrator.spec import DeploymentSpec, RoleMember, SpecError, parse_spec
from brixmesh.orchestrator.state import deployment_records
from tests.waiting import eventually


class MemoryBackend:
    """Pods that exist as records only; tests set their phase."""

    kind = "memory"
    spans_nodes = False
    node_name = "node-a"

    def __init__(self, cordons: Cordons | None = None) -> None:
        self.cordons = cordons if cordons is not None else Cordons(Path("/nonexistent/cordons.json"))
        self.pods: dict[str, Pod] = {}
        self.log: list[tuple[str, str]] = []
        self._count = 0

    def validate(self, spec: DeploymentSpec) -> None:
        if spec.engine == "sglang":
            raise SpecError("engine 'sglang' is not installed here", "engine")

    async def create_pod(
        self, spec: DeploymentSpec, generation: int, member: RoleMember | None = None
    ) -> Pod:
        self._count += 1
        name = f"{spec.name}-{self._count}"
        info = PodInfo(pod=name, deployment=spec.name, model=spec.model, engine=spec.engine, endpoint="")
        if member is not None:
            info.role = spec.role_named(member.role).role
            place_in_role_set(info, member, spec.for_role(member.role).engine_args)
        pod = Pod(info=info, generation=generation, slot=0, created_at=float(self._count))
        self.pods[name] = pod
        self.log.append(("create", name))
        return pod

    async def drain_pod(self, name: str, reason: str) -> None:
        self.pods[name].phase = "draining"
        self.log.append(("drain", name))

    async def delete_pod(self, name: str, reason: str) -> None:
        self.pods.pop(name, None)
        self.log.append(("delete", name))

    def list_pods(self, deployment: str | None = None) -> list[Pod]:
        return [p for p in self.pods.values() if deployment is None or p.deployment == deployment]

    async def changes(self) -> AsyncIterator[PodEvent]:
        await asyncio.Event().wait()
        yield  # pragma: no cover

    def pending_changes(self) -> list[PodEvent]:
        return []

    async def recover(self) -> None:
        return None

    async def close(self, *, stop_pods: bool) -> None:
        if stop_pods:
            self.pods.clear()


NOW = 1_000.0


def make(**fields) -> tuple[Orchestrator, MemoryBackend]:
    backend = MemoryBackend()
    orchestrator = Orchestrator(backend, decision_max_age_s=30, clock=lambda: NOW, **fields)
    return orchestrator, backend


def decision(desired: int, ts: float, deployment: str = "chat", role: str = "both") -> ScaleDecision:
    return ScaleDecision(
        deployment=deployment, role=role, current_replicas=1, desired_replicas=desired, algorithm="kpa",
        reason="test", ts=ts,
    )


def test_decisions_stale_duplicate_unknown_and_role() -> None:
    orchestrator, _ = make()
    orchestrator.apply(parse_spec({"name": "chat", "model": "m", "role": "decode"}))
    assert orchestrator.apply_decision(decision(3, NOW - 1)) == "applied"
    assert orchestrator.get("chat").replicas == 3
    assert orchestrator.apply_decision(decision(5, NOW - 1)) == "duplicate"
    assert orchestrator.apply_decision(decision(5, NOW - 2)) == "stale"  # out of order
    assert orchestrator.apply_decision(decision(5, NOW - 31)) == "stale"
    assert orchestrator.apply_decision(decision(5, NOW, deployment="nope")) == "unknown_deployment"
    assert orchestrator.apply_decision(decision(5, NOW, role="prefill")) == "role_mismatch"
    assert orchestrator.get("chat").replicas == 3
    assert orchestrator.apply_decision(decision(3, NOW - 0.5)) == "unchanged"
    assert orchestrator.apply_decision(decision(0, NOW)) == "applied"
    assert orchestrator.get("chat").replicas == 0


def test_reapplying_a_spec_keeps_autoscaled_replicas_unless_replicas_changed() -> None:
    orchestrator, _ = make()
    spec = parse_spec({"name": "chat", "model": "m", "replicas": 1})
    _, created = orchestrator.apply(spec)
    assert created
    orchestrator.apply_decision(decision(4, NOW))
    deployment, created = orchestrator.apply(spec)
    assert not created and deployment.replicas == 4 and deployment.generation == 1
    deployment, _ = orchestrator.apply(parse_spec({"name": "chat", "model": "m", "replicas": 2}))
    assert deployment.replicas == 2 and deployment.generation == 1
    deployment, _ = orchestrator.apply(parse_spec({"name": "chat", "model": "m2", "replicas": 2}))
    assert deployment.generation == 2


def test_patch_and_its_errors() -> None:
    orchestrator, _ = make()
    orchestrator.apply(parse_spec({"name": "chat", "model": "m", "replicas": 1}))
    orchestrator.apply_decision(decision(4, NOW))
    assert orchestrator.patch("chat", {"replicas": 1}).replicas == 1  # an explicit patch wins
    assert orchestrator.patch("chat", {"labels": {"team": "x"}}).spec.labels == {"team": "x"}
    with pytest.raises(SpecError, match="name cannot be changed"):
        orchestrator.patch("chat", {"name": "other"})
    with pytest.raises(SpecError, match="replicas") as caught:
        orchestrator.patch("chat", {"replicas": -2})
    assert caught.value.param == "replicas"
    with pytest.raises(SpecError, match="not installed"):
        orchestrator.patch("chat", {"engine": "sglang"})
    with pytest.raises(UnknownDeployment, match="deployment 'nope' not found"):
        orchestrator.patch("nope", {"replicas": 1})
    with pytest.raises(UnknownDeployment):
        orchestrator.delete("nope")


async def test_reconcile_creates_drains_and_deletes() -> None:
    orchestrator, backend = make()
    orchestrator.apply(parse_spec({"name": "chat", "model": "m", "replicas": 2}))
    await orchestrator.reconcile()
    assert sorted(backend.pods) == ["chat-1", "chat-2"]
    for pod in backend.pods.values():
        pod.phase = "ready"
    orchestrator.apply_decision(decision(1, NOW))
    await orchestrator.reconcile()
    await asyncio.gather(*[t for t in asyncio.all_tasks() if t.get_name().startswith("drain:")])
    assert ("drain", "chat-2") in backend.log and ("delete", "chat-2") in backend.log  # the newest goes
    assert sorted(backend.pods) == ["chat-1"]
    assert orchestrator.delete("chat") == ["chat-1"]
    await asyncio.gather(*[t for t in asyncio.all_tasks() if t.get_name().startswith("drain:")])
    assert backend.pods == {}


async def test_a_failing_backend_is_reported_and_retried() -> None:
    orchestrator, backend = make()
    orchestrator.apply(parse_spec({"name": "chat", "model": "m", "replicas": 1}))
    create = backend.create_pod

    async def broken(spec: DeploymentSpec, generation: int) -> Pod:
        raise OSError("no ports left")

    backend.create_pod = broken  # type: ignore[method-assign]
    await orchestrator.reconcile()
    assert orchestrator.get("chat").error == "OSError: no ports left"
    backend.create_pod = create  # type: ignore[method-assign]
    await orchestrator.reconcile()
    assert orchestrator.get("chat").error is None and len(backend.pods) == 1


def test_external_deployments_have_a_fixed_size_that_follows_their_endpoints() -> None:
    orchestrator, _ = make()
    two = [{"url": "http://e0:8000"}, {"url": "http://e1:8000"}]
    orchestrator.apply(parse_spec({"name": "chat", "model": "m", "external": two}))
    assert orchestrator.apply_decision(decision(5, NOW)) == "fixed_size"
    assert orchestrator.get("chat").replicas == 2
    assert orchestrator.patch("chat", {"external": two[:1]}).replicas == 1


async def test_durable_state_then_startup_sources_win_at_start_and_the_api_keeps_its_own(
    tmp_path: Path,
) -> None:
    store = deployment_records(tmp_path)
    before, _ = make(store=store)
    before.apply(parse_spec({"name": "by-hand", "model": "m", "replicas": 1}))
    before.patch("by-hand", {"replicas": 3})
    before.apply_startup([parse_spec({"name": "from-file", "model": "m", "replicas": 1}),
                          parse_spec({"name": "dropped", "model": "m"})])  # fmt: skip
    assert before.apply_decision(decision(4, NOW, deployment="from-file")) == "applied"
    before.apply(parse_spec({"name": "gone", "model": "m"}))
    before.delete("gone")

    after, _ = make(store=store)
    after.restore()
    assert sorted(after.deployments) == ["by-hand", "dropped", "from-file"]
    restored = after.get("from-file")
    assert (restored.replicas, restored.origin) == (4, "startup")
    assert restored.last_decision == decision(4, NOW, "from-file")
    # the files now list from-file with a new template and no longer list `dropped`
    after.apply_startup([parse_spec({"name": "from-file", "model": "m2", "replicas": 1})])
    assert sorted(after.deployments) == ["by-hand", "from-file"]
    updated = after.get("from-file")
    assert (updated.generation, updated.replicas) == (2, 4)  # a new template; the autoscaled count is kept
    assert (after.get("by-hand").replicas, after.get("by-hand").origin) == (3, "api")

    again, _ = make(store=store)
    again.restore()
    assert sorted(again.deployments) == ["by-hand", "from-file"] and again.get("from-file").spec.model == "m2"
    assert sorted(path.name for path in store.directory.iterdir()) == ["by-hand.json", "from-file.json"]


def test_a_deployment_is_autoscaled_while_decisions_keep_arriving() -> None:
    now = [NOW]
    orchestrator = Orchestrator(MemoryBackend(), decision_max_age_s=30, clock=lambda: now[0])
    deployment, _ = orchestrator.apply(parse_spec({"name": "chat", "model": "m"}))
    assert not orchestrator.autoscaled(deployment)
    assert orchestrator.apply_decision(decision(1, NOW)) == "unchanged"  # a claim without a change counts
    assert orchestrator.autoscaled(deployment) and deployment.last_decision.ts == NOW
    now[0] += 31
    assert not orchestrator.autoscaled(deployment)


async def test_close_stops_the_reconcile_loop_before_the_pods() -> None:
    """Else a pass during a slow backend close starts pods in place of the ones being stopped (left running:
    engines outlive the orchestrator)."""
    orchestrator, backend = make(reconcile_interval_s=0.01)
    orchestrator.apply(parse_spec({"name": "chat", "model": "m", "replicas": 2}))
    loop = asyncio.create_task(orchestrator.run())
    await eventually(lambda: len(backend.pods) == 2, 5)
    close = backend.close

    async def slow_close(*, stop_pods: bool) -> None:
        await close(stop_pods=stop_pods)
        await asyncio.sleep(0.2)  # a pass would run meanwhile

    backend.close = slow_close  # type: ignore[method-assign]
    await orchestrator.close(stop_pods=True)
    assert backend.pods == {} and loop.done()


def gpu_decision(action: str, pods: list[str], node: str = "node-a", gpu: str = "1") -> GpuDecision:
    return GpuDecision(
        decision_id="d", node=node, gpu=gpu, pods=pods, action=action, severity="critical", signal="xid",
        reason="test", ts=NOW,
    )  # fmt: skip


async def test_gpu_decisions_drain_and_cordon_idempotently(tmp_path: Path) -> None:
    backend = MemoryBackend(Cordons(tmp_path / "cordons.json"))
    orchestrator = Orchestrator(backend, drain_poll_interval_s=0.01, clock=lambda: NOW)
    orchestrator.apply(parse_spec({"name": "chat", "model": "m", "replicas": 2, "drain_grace_s": 0}))
    await orchestrator.reconcile()
    first, second = backend.pods
    assert orchestrator.apply_gpu_decision(gpu_decision("replace_pod", [first], node="node-b")) == "other_node"
    assert orchestrator.apply_gpu_decision(gpu_decision("observe", [first])) == "observed"
    assert orchestrator.apply_gpu_decision(gpu_decision("replace_pod", [first, "gone-pod"])) == "applied"
    assert orchestrator.apply_gpu_decision(gpu_decision("replace_pod", [first])) == "unchanged"  # resent
    await eventually(lambda: first not in backend.pods, 5)
    assert ("drain", first) in backend.log and ("drain", second) not in backend.log
    await orchestrator.reconcile()  # the drained pod is replaced
    assert len(backend.pods) == 2
    assert [(c.node, c.gpu) for c in Cordons(tmp_path / "cordons.json").all()] == [("node-a", "1")]  # durable
    assert orchestrator.apply_gpu_decision(gpu_decision("cordon_node", [])) == "applied"
    assert backend.cordons.blocking("node-a", "5") is not None
    assert sorted(c.gpu for c in backend.cordons.uncordon("node-a")) == ["", "1"]
    assert backend.cordons.blocking("node-a", "1") is None
