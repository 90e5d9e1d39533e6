"""``python -m brixmesh.orchestrator.check FILE``: validate a deployments file as the orchestrator would at
start (spec rules and what this machine can run). Prints the number of engine pods the file asks for, or
the first problem as one line (exit status 2). ``brixmesh up --pd`` runs it before starting the mesh."""

from __future__ import annotations

import sys
from pathlib import Path

from brixmesh.orchestrator.launch import check_engine
from brixmesh.orchestrator.spec import DeploymentSpec, SpecError, load_path


def engine_pods(spec: DeploymentSpec) -> int:
    """Pods the spec runs once it is up (role sets: role sets x pods per role set)."""
    if not spec.has_roles:
        return spec.replicas
    role_sets = 1 if spec.mode == "pool" else spec.replicas
    return role_sets * sum(role.replicas for role in spec.roles)


def check_runnable(spec: DeploymentSpec) -> None:
    """Raise SpecError if this machine cannot run ``spec`` (each role's engine and CPUs, for role sets)."""
    for runnable in [spec.for_role(role.name) for role in spec.roles] or [spec]:
        check_engine(runnable)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m brixmesh.orchestrator.check FILE", file=sys.stderr)
        return 2
    try:
        specs = load_path(Path(args[0]))
        for spec in specs:
            check_runnable(spec)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(sum(engine_pods(spec) for spec in specs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
