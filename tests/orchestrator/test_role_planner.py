"""Role-set planning: what to start and drain next, in replica and pool mode, during rolling updates."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from brixmesh.orchestrator.role_planner import (
    FAILED_REASON,
    MemberView,
    RoleSetPlan,
    RoleView,
    plan_role_sets,
    role_set_states,
)
from brixmesh.orchestrator.spec import RoleMember, UpdatePolicy

PREFILL = RoleView("prefill", replicas=1, generation=1)
DECODE = RoleView("decode", replicas=2, generation=1)
ROLES = ("prefill", "decode")


class World:
    """Pods as a backend would hold them: created not ready, ready after one step, drained ones gone."""

    def __init__(self, mode: str, roles: list[RoleView], policy: UpdatePolicy, desired: int = 1) -> None:
        self.mode, self.roles, self.policy, self.desired = mode, roles, policy, desired
        self.pods: dict[str, MemberView] = {}
        self.counter = itertools.count()

    def add(self, member: RoleMember | None, generation: int = 1, ready: bool = True) -> str:
        number = next(self.counter)
        name = f"pod{number}"
        self.pods[name] = MemberView(name, member, generation, ready=ready, created_at=float(number))
        return name

    def plan(self) -> RoleSetPlan:
        return plan_role_sets(self.mode, self.desired, self.roles, self.policy, list(self.pods.values()))

    def step(self) -> RoleSetPlan:
        """Pods created last step become ready; then one plan is applied."""
        self.pods = {name: replace(pod, ready=True) for name, pod in self.pods.items()}
        plan = self.plan()
        for name, _ in plan.drain:
            del self.pods[name]
        generations = {role.name: role.generation for role in self.roles}
        for member in plan.create:
            self.add(member, generations[member.role], ready=False)
        return plan

    def members(self, generation: int | None = None) -> list[RoleMember]:
        return sorted(p.member for p in self.pods.values()  # type: ignore[type-var]
                      if generation is None or p.generation == generation)  # fmt: skip

    def ready_sets(self) -> int:
        return sum(state.ready for state in role_set_states(self.roles, list(self.pods.values())))


def test_replica_mode_starts_every_role_set_whole_and_then_holds_still() -> None:
    world = World("replica", [PREFILL, DECODE], UpdatePolicy(role_order="parallel"), desired=2)
    assert set(world.step().create) == {
        RoleMember(s, "prefill", 0) for s in (0, 1)
    } | {RoleMember(s, "decode", i) for s in (0, 1) for i in (0, 1)}
    assert world.step().empty and world.ready_sets() == 2


def test_sequential_starts_a_role_once_the_earlier_ones_are_ready() -> None:
    decode_first = [replace(PREFILL, upgrade_order=1), DECODE]
    world = World("replica", decode_first, UpdatePolicy(role_order="sequential"))
    assert world.step().create == (RoleMember(0, "decode", 0), RoleMember(0, "decode", 1))
    assert world.step().create == (RoleMember(0, "prefill", 0),)
    assert world.step().empty


def test_interleaved_starts_one_pod_at_a_time_alternating_roles() -> None:
    roles = [PREFILL, replace(DECODE, upgrade_order=1)]
    world = World("replica", roles, UpdatePolicy(role_order="interleaved"))
    order = [world.step().create for _ in range(4)]
    assert order == [
        (RoleMember(0, "decode", 0),), (RoleMember(0, "prefill", 0),), (RoleMember(0, "decode", 1),), ()
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("surge", "unavailable", "most_sets", "fewest_ready"),
    [(1, 0, 3, 2), (2, 0, 4, 2), (0, 1, 2, 1), (1, 1, 3, 1)],
)
def test_a_rolling_update_replaces_role_sets_within_its_bounds(
    surge: int, unavailable: int, most_sets: int, fewest_ready: int
) -> None:
    world = World("replica", [PREFILL, DECODE], UpdatePolicy(max_surge=surge, max_unavailable=unavailable), 2)
    while not world.step().empty:
        pass
    world.roles = [PREFILL, replace(DECODE, generation=2)]  # only decode's template changed: sets go whole
    seen_sets, seen_ready = [], []
    for _ in range(30):
        if world.step().empty:
            break
        seen_sets.append(len({m.role_set for m in world.members()}))
        seen_ready.append(world.ready_sets())
    assert max(seen_sets) == most_sets and min(seen_ready) >= fewest_ready
    members = world.members()
    assert len(members) == 6 and len({m.role_set for m in members}) == 2
    assert all(p.generation == (2 if p.place.role == "decode" else 1) for p in world.pods.values())


def test_a_failed_pod_is_replaced_in_its_own_role_set() -> None:
    world = World("replica", [PREFILL, DECODE], UpdatePolicy(), desired=2)
    while not world.step().empty:
        pass
    failed = next(n for n, p in world.pods.items() if p.member == RoleMember(1, "decode", 1))
    world.pods[failed] = replace(world.pods[failed], failed=True)
    plan = world.plan()
    assert plan.drain == ((failed, FAILED_REASON),) and plan.create == (RoleMember(1, "decode", 1),)


def test_scale_down_drains_whole_role_sets_not_ready_first_then_newest() -> None:
    world = World("replica", [PREFILL, DECODE], UpdatePolicy(role_order="parallel"), desired=3)
    while not world.step().empty:
        pass
    starting = next(n for n, p in world.pods.items() if p.member == RoleMember(0, "prefill", 0))
    world.pods[starting] = replace(world.pods[starting], ready=False)
    world.desired = 1
    drained = {world.pods[name].member.role_set for name, _ in world.plan().drain}  # type: ignore[union-attr]
    assert drained == {0, 2}
    assert {why for _, why in world.plan().drain} == {"scale down"}


def test_new_role_sets_do_not_reuse_the_index_of_a_draining_one() -> None:
    world = World("replica", [PREFILL], UpdatePolicy())
    name = world.add(RoleMember(0, "prefill", 0))
    world.pods[name] = replace(world.pods[name], draining=True)
    assert world.plan().create == (RoleMember(1, "prefill", 0),)


def test_pods_of_no_role_set_go_once_the_role_sets_serve() -> None:
    world = World("replica", [PREFILL], UpdatePolicy())
    legacy = world.add(None, generation=0)
    plan = world.step()
    assert plan.create == (RoleMember(0, "prefill", 0),) and plan.drain == ()
    assert world.step().drain == ((legacy, "replaced by a newer template"),)


def test_role_set_states_need_every_role_ready() -> None:
    world = World("replica", [PREFILL, DECODE], UpdatePolicy(role_order="parallel"))
    world.step()
    assert world.ready_sets() == 0
    world.step()
    states = role_set_states(world.roles, list(world.pods.values()))
    assert [(s.index, s.ready, s.current, s.pods) for s in states] == [(0, True, True, 3)]
    world.roles = [PREFILL, replace(DECODE, replicas=3)]
    assert not role_set_states(world.roles, list(world.pods.values()))[0].ready


def test_pool_mode_scales_each_role_on_its_own_in_one_role_set() -> None:
    world = World("pool", [PREFILL, DECODE], UpdatePolicy(role_order="parallel"))
    world.step()
    world.roles = [PREFILL, replace(DECODE, replicas=4)]
    assert world.step().create == (RoleMember(0, "decode", 2), RoleMember(0, "decode", 3))
    world.roles = [replace(PREFILL, replicas=0), replace(DECODE, replicas=4)]
    plan = world.step()
    assert plan.create == () and [why for _, why in plan.drain] == ["scale down"]
    assert {m.role_set for m in world.members()} == {0}


def test_pool_mode_sequential_update_rolls_one_role_after_the_other() -> None:
    world = World("pool", [PREFILL, replace(DECODE, upgrade_order=1)], UpdatePolicy(role_order="sequential"))
    while not world.step().empty:
        pass
    world.roles = [replace(PREFILL, generation=2), replace(DECODE, upgrade_order=1, generation=2)]
    history = []
    while not world.step().empty:
        pods = world.pods.values()
        history.append({role: [p.generation for p in pods if p.place.role == role] for role in ROLES})
    prefill_done = next(i for i, h in enumerate(history) if h["prefill"] == [2])
    assert all(h["decode"] == [1, 1] for h in history[:prefill_done])
    assert history[-1] == {"prefill": [2], "decode": [2, 2]}
    assert all(len(h["decode"]) <= 3 and len(h["prefill"]) <= 2 for h in history)


def test_pool_mode_interleaved_update_alternates_roles_one_pod_at_a_time() -> None:
    roles = [replace(PREFILL, replicas=2), replace(DECODE, upgrade_order=1)]
    world = World("pool", roles, UpdatePolicy(role_order="interleaved"))
    while not world.step().empty:
        pass
    world.roles = [replace(role, generation=2) for role in roles]
    started = []
    while True:
        plan = world.step()
        if plan.empty:
            break
        assert len(plan.create) <= 1
        started.extend(member.role for member in plan.create)
    assert started == ["prefill", "decode", "prefill", "decode"]
    assert world.members(generation=1) == []


def test_pool_mode_max_unavailable_drains_before_it_starts() -> None:
    world = World("pool", [DECODE], UpdatePolicy(max_surge=0, max_unavailable=1))
    while not world.step().empty:
        pass
    world.roles = [replace(DECODE, generation=2)]
    plan = world.step()
    assert len(plan.drain) == 1 and plan.create == (RoleMember(0, "decode", 0),)
    assert len(world.pods) == 2
