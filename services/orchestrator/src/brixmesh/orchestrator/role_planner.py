"""Which pods of a role-set deployment to start and which to drain next. Pure: no I/O, no clock.

Replica mode: the role set is the unit. ``desired`` role sets of the current templates are kept, each with
``role.replicas`` pods per role; after a template change whole role sets are replaced as a rolling update
(at most ``max_surge`` role sets beyond ``desired``, an outdated one drained only while at least ``desired -
max_unavailable`` role sets stay ready, so with ``max_unavailable: 0`` a serving role set exists at every
moment). Pool mode: one role set whose roles are rolled pod by pod with the same bounds, each role on its own
count. In both modes ``role_order`` says which roles may start pods: ``parallel`` all; ``sequential`` a role
(with all roles of the same ``upgrade_order``) only once every earlier role is complete, current and ready;
``interleaved`` one pod at a time, the next from the role with the most pods still to make current and
ready (ties: lower ``upgrade_order``), so that the roles alternate.

A failed pod (exited, crash-looping) is drained and started again in its place: same role set, role and
replica index. Pods of no role set (the deployment had no roles before) are drained once the role sets are
up (replica mode: counted as one outdated role set; pool mode: once every role is complete and ready).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from brixmesh.orchestrator.spec import MAX_ROLE_SETS, RoleMember, RoleOrder, UpdatePolicy

FAILED_REASON = "failed; replaced within its role set"


@dataclass(frozen=True)
class MemberView:
    """One pod as the planner sees it; ``member`` None: a pod of no role set."""

    name: str
    member: RoleMember | None
    generation: int
    ready: bool
    created_at: float
    draining: bool = False
    failed: bool = False

    @property
    def place(self) -> RoleMember:
        """Its place in a role set; only asked of pods that have one (the others are set apart first)."""
        if self.member is None:
            raise ValueError(f"pod {self.name} belongs to no role set")
        return self.member


@dataclass(frozen=True)
class RoleView:
    name: str
    replicas: int
    """Pods per role set (replica mode) or in the pool."""
    generation: int
    """The generation of the role's current template."""
    upgrade_order: int = 0


@dataclass(frozen=True)
class RoleSetPlan:
    create: tuple[RoleMember, ...]
    drain: tuple[tuple[str, str], ...]
    """(pod, why)."""

    @property
    def empty(self) -> bool:
        return not self.create and not self.drain


@dataclass(frozen=True)
class RoleSetState:
    index: int
    ready: bool
    """Every role has its desired number of ready pods."""
    current: bool
    """Every pod runs its role's current template."""
    pods: int


def plan_role_sets(
    mode: str, desired: int, roles: Sequence[RoleView], policy: UpdatePolicy, pods: Sequence[MemberView]
) -> RoleSetPlan:
    """``desired``: role sets (replica mode; pool mode: ignored, one role set)."""
    if desired < 0:
        raise ValueError(f"desired role sets must be >= 0, got {desired}")
    active = [pod for pod in pods if not pod.draining]
    drain = [(pod.name, FAILED_REASON) for pod in active if pod.failed]
    alive = [pod for pod in active if not pod.failed]
    if mode == "pool":
        create, more = _plan_pool(roles, policy, alive)
    else:
        taken = {pod.place.role_set for pod in pods if pod.member is not None}
        create, more = _plan_replica(desired, roles, policy, alive, taken)
    return RoleSetPlan(create=tuple(create), drain=tuple(drain + more))


def role_set_states(roles: Sequence[RoleView], pods: Sequence[MemberView]) -> list[RoleSetState]:
    """Each role set with a pod not draining, by index."""
    by_set = _by_set([pod for pod in pods if not pod.draining and pod.member is not None])
    return [
        RoleSetState(index=index, ready=_set_ready(roles, members), current=_set_current(roles, members),
                     pods=len(members))
        for index, members in sorted(by_set.items())
    ]  # fmt: skip


# --- replica mode ------------------------------------------------------------------------------------


def _plan_replica(
    desired: int, roles: Sequence[RoleView], policy: UpdatePolicy, pods: list[MemberView], taken: set[int]
) -> tuple[list[RoleMember], list[tuple[str, str]]]:
    by_set = _by_set([pod for pod in pods if pod.member is not None])
    legacy = [pod for pod in pods if pod.member is None]
    current = [index for index, members in by_set.items() if _set_current(roles, members)]
    outdated = [index for index in by_set if index not in current]
    ready = {index: _set_ready(roles, members) for index, members in by_set.items()}
    units_outdated = [(index, ready[index]) for index in outdated]
    if legacy:
        units_outdated.append((-1, any(pod.ready for pod in legacy)))
    new_sets, retired = _roll(
        desired, policy, current=[(index, ready[index]) for index in current], outdated=units_outdated,
        is_ready=lambda unit: unit[1], newness=lambda unit: unit[0],
    )  # fmt: skip
    drain: list[tuple[str, str]] = []
    retired_indexes = {index for index, _ in retired}
    for index in retired_indexes:
        why = "scale down" if index in current else "replaced by a newer template"
        drain.extend((pod.name, why) for pod in (legacy if index == -1 else by_set[index]))
    create: list[RoleMember] = []
    for index in current:
        if index not in retired_indexes:
            more, surplus = _complete_set(index, roles, policy.role_order, by_set[index])
            create.extend(more)
            drain.extend((name, "scale down") for name in surplus)
    free = (index for index in range(MAX_ROLE_SETS) if index not in taken)
    for _ in range(new_sets):
        index = next(free, None)
        if index is None:
            break
        create.extend(_complete_set(index, roles, policy.role_order, [])[0])
    return create, drain


def _complete_set(
    index: int, roles: Sequence[RoleView], order: RoleOrder, members: list[MemberView]
) -> tuple[list[RoleMember], list[str]]:
    """The members role set ``index`` still lacks that ``order`` lets start now, and its surplus pods."""
    by_role: dict[str, list[MemberView]] = defaultdict(list)
    for pod in members:
        by_role[pod.place.role].append(pod)
    surplus = [pod.name for role, pods in by_role.items() for pod in pods
               if role not in {r.name for r in roles}]  # fmt: skip
    missing: dict[str, list[int]] = {}
    for role in roles:
        pods = sorted(by_role.get(role.name, []), key=lambda pod: pod.place.replica_index)
        held = {pod.place.replica_index for pod in pods}
        surplus.extend(pod.name for pod in pods if pod.place.replica_index >= role.replicas)
        missing[role.name] = [i for i in range(role.replicas) if i not in held]
    settled = {role.name: not missing[role.name] and _all_ready(by_role.get(role.name, []), role.replicas)
               for role in roles}  # fmt: skip
    starting = any(not pod.ready for pod in members if pod.name not in surplus)
    work = {role.name: len(missing[role.name]) for role in roles}
    allowed = _roles_allowed(roles, order, settled, starting, work)
    create = [RoleMember(index, name, i) for name in allowed for i in missing[name]]
    if order == "interleaved":
        create = sorted(create, key=lambda m: m.replica_index)[:1]
    return create, surplus


# --- pool mode ---------------------------------------------------------------------------------------


def _plan_pool(
    roles: Sequence[RoleView], policy: UpdatePolicy, pods: list[MemberView]
) -> tuple[list[RoleMember], list[tuple[str, str]]]:
    names = {role.name for role in roles}
    by_role: dict[str, list[MemberView]] = defaultdict(list)
    drain: list[tuple[str, str]] = []
    legacy = []
    for pod in pods:
        if pod.member is None:
            legacy.append(pod)
        elif pod.place.role not in names:
            drain.append((pod.name, "role removed"))
        else:
            by_role[pod.place.role].append(pod)
    current = {r.name: [p for p in by_role[r.name] if p.generation == r.generation] for r in roles}
    outdated = {r.name: [p for p in by_role[r.name] if p.generation != r.generation] for r in roles}
    settled = {r.name: not outdated[r.name] and _all_ready(current[r.name], r.replicas) for r in roles}
    work = {r.name: max(0, r.replicas - sum(pod.ready for pod in current[r.name])) for r in roles}
    starting = any(not pod.ready for r in roles for pod in current[r.name])
    allowed = _roles_allowed(roles, policy.role_order, settled, starting, work)
    create: list[RoleMember] = []
    for role in roles:
        if role.name in allowed:
            count, retired = _roll(
                role.replicas, policy, current=current[role.name], outdated=outdated[role.name],
                is_ready=lambda pod: pod.ready, newness=lambda pod: pod.created_at,
            )  # fmt: skip
            if policy.role_order == "interleaved":
                count = min(count, 1)
        else:  # waits for its turn: only a scale-down
            count, retired = 0, _surplus(role.replicas, current[role.name], outdated[role.name])
        held = {pod.place.replica_index for pod in current[role.name] if pod not in retired}
        free = (i for i in range(len(held) + count + 1) if i not in held)
        create.extend(RoleMember(0, role.name, next(free)) for _ in range(count))
        for pod in retired:
            why = "replaced by a newer template" if pod in outdated[role.name] else "scale down"
            drain.append((pod.name, why))
    if legacy and all(settled.values()):
        drain.extend((pod.name, "replaced by role sets") for pod in legacy)
    return create, drain


# --- shared ------------------------------------------------------------------------------------------

U = TypeVar("U")


def _roll(
    desired: int, policy: UpdatePolicy, *, current: list[U], outdated: list[U],
    is_ready: Callable[[U], bool], newness: Callable[[U], float],
) -> tuple[int, list[U]]:
    """A rolling update of units (role sets or pods): how many current units to create and which units to
    drain (not ready first, then the newest)."""
    current = sorted(current, key=lambda unit: (is_ready(unit), -newness(unit)))
    outdated = sorted(outdated, key=lambda unit: (is_ready(unit), -newness(unit)))
    surplus = current[: max(0, len(current) - desired)]
    kept = current[len(surplus):]
    available = sum(map(is_ready, kept)) + sum(map(is_ready, outdated))
    min_available = desired - policy.max_unavailable
    retire: list[U] = []
    for unit in outdated:
        if is_ready(unit) and available - 1 < min_available:
            break
        retire.append(unit)
        available -= is_ready(unit)
    left = len(kept) + len(outdated) - len(retire)
    create = max(0, min(desired - len(kept), desired + policy.max_surge - left))
    return create, surplus + retire


def _surplus(desired: int, current: list[MemberView], outdated: list[MemberView]) -> list[MemberView]:
    """Pods beyond ``desired`` of a role waiting for its turn: outdated first, not ready, then newest."""
    def order(pods: list[MemberView]) -> list[MemberView]:
        return sorted(pods, key=lambda pod: (pod.ready, -pod.created_at))

    return (order(outdated) + order(current))[: max(0, len(current) + len(outdated) - desired)]


def _roles_allowed(
    roles: Sequence[RoleView], order: RoleOrder, settled: Mapping[str, bool], starting: bool,
    work: Mapping[str, int],
) -> list[str]:
    """The roles that may start pods now."""
    if order == "parallel":
        return [role.name for role in roles]
    if order == "interleaved":
        if starting:
            return []
        busy = [role for role in roles if work[role.name]]
        if not busy:
            return []
        first = min(busy, key=lambda role: (-work[role.name], role.upgrade_order))
        return [first.name]
    allowed = []
    for upgrade_order in sorted({role.upgrade_order for role in roles}):
        group = [role.name for role in roles if role.upgrade_order == upgrade_order]
        allowed.extend(group)
        if not all(settled[name] for name in group):
            break
    return allowed


def _by_set(pods: Sequence[MemberView]) -> dict[int, list[MemberView]]:
    by_set: dict[int, list[MemberView]] = defaultdict(list)
    for pod in pods:
        by_set[pod.place.role_set].append(pod)
    return dict(by_set)


def _set_current(roles: Sequence[RoleView], members: list[MemberView]) -> bool:
    generations = {role.name: role.generation for role in roles}
    return all(generations.get(pod.place.role) == pod.generation for pod in members)


def _set_ready(roles: Sequence[RoleView], members: list[MemberView]) -> bool:
    return all(
        _all_ready([pod for pod in members if pod.place.role == role.name], role.replicas)
        for role in roles
    )


def _all_ready(pods: list[MemberView], replicas: int) -> bool:
    return sum(pod.ready for pod in pods) >= replicas
