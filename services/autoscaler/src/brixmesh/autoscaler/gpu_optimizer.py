"""The ``optimizer`` strategy: replicas per GPU-type deployment of one model from profiles and live traffic.

Inputs: :class:`GpuProfile` per GPU type (JSON files written by ``brixmesh profile``, loaded at start, and
``gpu.profiles.<model>.<gpu>`` messages, which replace them), the routers' length histograms
(``router.stats``, via :class:`LoadShape`). Each evaluation solves :func:`gpu_plan.solve` and publishes a
:class:`ScaleDecision` per deployment whose count changes. An infeasible load keeps the last feasible plan
in force and says why. Scale-downs wait ``scale_down_delay_s``: a deployment goes no lower than the most
any plan asked of it in that time, so a dip in traffic does not stop pods that the next second needs.
The loop is closed on the orchestrator's ``deployments.status`` as for PodAutoscalers: a decision in force
is sent again when the orchestrator has not taken it, when its desired replicas were changed by hand, and
every ``decision_refresh_s`` (so the orchestrator shows the deployment as autoscaled).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from brixmesh.autoscaler.gpu_plan import GpuOption, Infeasible, Plan, capacity_from_profile, solve
from brixmesh.autoscaler.load_shape import LoadShape
from brixmesh.autoscaler.spec import SpecError, describe, read_spec_items
from brixmesh.autoscaler.window import SlidingWindow
from brixmesh.common.bus import Bus
from brixmesh.common.messages import (
    DeploymentStatus, GpuPlan, GpuProfile, PlanRoute, RouterStats, ScaleDecision,
)  # fmt: skip
from brixmesh.common.shapes import bucket_tokens
from brixmesh.common.subjects import GPU_PLANS, GPU_PROFILES, ROUTER_STATS, SCALE_DECISIONS

PLAN_REPUBLISH_S = 5.0
"""The plan goes out on every change and at least this often (a router that starts late gets it soon)."""

log = logging.getLogger(__name__)


class OptimizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    """Served model name: the router stats and profiles to read."""
    deployments: dict[str, str] = Field(min_length=1)
    """GPU type -> the deployment that runs the model on it."""
    profiles_dir: str = ""
    """Directory of ``<gpu>.json`` profiles (``brixmesh profile --out``); messages on the bus replace them."""
    min_replicas: dict[str, int] = Field(default_factory=dict)
    max_replicas: int = Field(default=16, ge=1)
    """Per GPU type."""
    window_s: float = Field(default=60.0, gt=0)
    """Traffic histogram window."""
    min_window_s: float = Field(default=5.0, ge=0)
    """No plan until the window covers this much traffic time (no decision from an empty window)."""
    scale_down_delay_s: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> OptimizerSpec:
        unknown = set(self.min_replicas) - set(self.deployments)
        if unknown:
            raise ValueError(
                f"min_replicas names GPU types without a deployment: {', '.join(sorted(unknown))}"
            )
        for gpu, count in self.min_replicas.items():
            if not 0 <= count <= self.max_replicas:
                raise ValueError(f"min_replicas[{gpu}] = {count} must be within 0..max_replicas")
        if len(set(self.deployments.values())) != len(self.deployments):
            raise ValueError("each GPU type needs its own deployment")
        return self


def load_optimizer_specs(path: Path) -> list[OptimizerSpec]:
    """A YAML file with one spec, a list, or ``{gpu_optimizers: [...]}``; errors are one line."""
    specs = []
    for item in read_spec_items(path, "gpu_optimizers"):
        if not isinstance(item, dict):
            raise SpecError(f"{path}: an optimizer spec must be a mapping, got {type(item).__name__}")
        try:
            specs.append(OptimizerSpec.model_validate(item))
        except ValidationError as exc:
            raise SpecError(f"{path}: {describe(exc, item.get('name')).replace('autoscaler', 'optimizer')}")
    return specs


def read_profile(path: Path) -> GpuProfile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=GpuProfile)
    except (OSError, msgspec.DecodeError) as exc:
        raise SpecError(f"{path}: not a GPU profile: {exc}") from None


@dataclass(frozen=True, slots=True)
class FleetView:
    """What the optimizer reads of the autoscaler's state about a deployment."""

    live_replicas: Callable[[str], int]
    """Starting and ready pods (from ``pods.*``)."""
    status_of: Callable[[str], DeploymentStatus | None]
    """The orchestrator's latest ``deployments.status``, None while it has reported none."""
    refresh_s: float = 10.0
    """A decision in force is sent again at least this often."""


class GpuOptimizer:
    """One optimizer spec's state."""

    def __init__(self, spec: OptimizerSpec, fleet: FleetView) -> None:
        self.spec = spec
        self.fleet = fleet
        self.shape = LoadShape(spec.window_s)
        self.profiles: dict[str, GpuProfile] = {}
        self.plan: Plan | None = None
        self.plan_reason = "no plan yet"
        self.infeasible_reason = ""
        self.decisions = 0
        self._plan_sent: tuple[Plan | None, float] = (None, 0.0)
        self._in_force: dict[str, tuple[ScaleDecision, str]] = {}
        """deployment -> the decision last sent for it, and the reason it was first made."""
        delay = max(spec.scale_down_delay_s, 1e-3)
        self._recent = {d: SlidingWindow(delay) for d in spec.deployments.values()}
        if spec.profiles_dir:
            for gpu in spec.deployments:
                path = Path(spec.profiles_dir) / f"{gpu}.json"
                if path.is_file():
                    self.set_profile(read_profile(path))

    def set_profile(self, profile: GpuProfile) -> None:
        if profile.model == self.spec.model and profile.gpu in self.spec.deployments:
            self.profiles[profile.gpu] = profile

    def options(self) -> list[GpuOption]:
        return [
            GpuOption(gpu, p.cost_per_hour, capacity_from_profile(p), self.spec.min_replicas.get(gpu, 0),
                      self.spec.max_replicas)
            for gpu, p in sorted(self.profiles.items())
        ]  # fmt: skip

    def evaluate(self, now: float) -> list[ScaleDecision]:
        """Plan for the window's traffic and return the decisions to publish (changes and re-sends)."""
        spec = self.spec
        covered = self.shape.covered_s(now)
        if covered < spec.min_window_s or covered == 0:
            return []
        load = self.shape.rates(now)
        missing = sorted(set(spec.deployments) - set(self.profiles))
        try:
            if not self.profiles:
                raise Infeasible(f"no profile for any of {', '.join(sorted(spec.deployments))}")
            plan = solve(load, self.options())
        except Infeasible as exc:
            self.infeasible_reason = str(exc)
            if self.plan is None:
                return []
            plan = self.plan
            reason = f"optimizer: keeping {plan.describe()}: {exc}"
        else:
            self.plan, self.infeasible_reason = plan, ""
            total = sum(load.values())
            reason = (f"optimizer: {plan.describe()} for {total:.2f} req/s in {len(load)} length buckets "
                      f"over {covered:.0f}s" + (f" (no profile for {', '.join(missing)})" if missing else ""))
        self.plan_reason = reason
        decisions = []
        for gpu, deployment in spec.deployments.items():
            wanted = plan.replicas.get(gpu, spec.min_replicas.get(gpu, 0))
            recent = self._recent[deployment]
            recent.add(now, wanted)
            desired = max(wanted, int(recent.max(now) or 0)) if spec.scale_down_delay_s > 0 else wanted
            status = self.fleet.status_of(deployment)
            current = status.desired_replicas if status is not None else self.fleet.live_replicas(deployment)
            sent, _ = self._in_force.get(deployment, (None, ""))
            if sent is not None and sent.desired_replicas == desired:
                again = self._enforce(deployment, status, now)
                if again is not None:
                    decisions.append(again)
                continue
            if sent is None and desired == current:
                continue  # nothing to change: the first decision is a real change
            self.decisions += 1
            held = f"; held at {desired} by scale_down_delay_s (plan: {wanted})" if desired > wanted else ""
            decision = ScaleDecision(
                deployment=deployment, current_replicas=current, desired_replicas=desired,
                algorithm="optimizer", reason=reason + held, ts=now,
                window_state=f"window={covered:.0f}/{spec.window_s:g}s",
                metrics={"plan_cost_per_hour": round(plan.cost_per_hour, 4),
                         "load_rps": round(sum(load.values()), 4), f"replicas_{gpu}": float(desired),
                         **{f"load_rps_in{bucket_tokens(i)}_out{bucket_tokens(o)}": round(r, 4)
                            for (i, o), r in sorted(load.items())}},
            )  # fmt: skip
            self._in_force[deployment] = (decision, decision.reason)
            decisions.append(decision)
        return decisions

    def _enforce(
        self, deployment: str, status: DeploymentStatus | None, now: float
    ) -> ScaleDecision | None:
        """The decision in force again (``ts`` now), or None while the orchestrator shows it in effect and
        it went out less than ``refresh_s`` ago; without a status, after ``refresh_s``."""
        sent, reason = self._in_force[deployment]
        if status is not None and status.fixed_size:
            return None
        if status is not None and status.last_decision_ts < sent.ts:
            why = "not acknowledged by the orchestrator"
        elif status is not None and status.desired_replicas != sent.desired_replicas:
            why = f"the orchestrator's desired replicas were changed to {status.desired_replicas}"
        elif now - sent.ts >= self.fleet.refresh_s:
            why = "refresh"
        else:
            return None
        again = msgspec.structs.replace(sent, ts=now, resent=True, reason=f"re-sent ({why}): {reason}")
        self._in_force[deployment] = (again, reason)
        return again

    def plan_to_publish(self, now: float) -> GpuPlan | None:
        """The plan for the routers when it changed or was last sent ``PLAN_REPUBLISH_S`` ago."""
        plan = self.plan
        sent, sent_at = self._plan_sent
        if plan is None or (plan is sent and now - sent_at < PLAN_REPUBLISH_S):
            return None
        self._plan_sent = (plan, now)
        routes = [
            PlanRoute(input_bucket=i, output_bucket=o,
                      shares={gpu: round(rate / sum(split.values()), 4) for gpu, rate in split.items()})
            for (i, o), split in sorted(plan.routing.items()) if split
        ]  # fmt: skip
        return GpuPlan(model=self.spec.model, ts=now, replicas=plan.replicas,
                       cost_per_hour=plan.cost_per_hour, routes=routes)

    def status(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "spec": self.spec.model_dump(),
            "profiles": {gpu: {"cost_per_hour": p.cost_per_hour, "cells": len(p.cells), "source": p.source}
                         for gpu, p in self.profiles.items()},
            "plan": None if plan is None else {
                "replicas": plan.replicas, "cost_per_hour": plan.cost_per_hour,
                "routing": [{"input_tokens": bucket_tokens(i), "output_tokens": bucket_tokens(o), "rps": r}
                            for (i, o), r in sorted(plan.routing.items())],
            },
            "reason": self.plan_reason,
            "infeasible": self.infeasible_reason,
            "decisions": self.decisions,
        }  # fmt: skip


class GpuOptimizers:
    """Every optimizer spec in force, fed from the bus, evaluated by :meth:`run_once`."""

    def __init__(self, specs: list[OptimizerSpec], fleet: FleetView) -> None:
        self.optimizers = [GpuOptimizer(spec, fleet) for spec in specs]

    @classmethod
    def from_files(cls, paths: list[Path], fleet: FleetView) -> GpuOptimizers:
        """Specs and their profiles from files; a bad file is a one-line error and exit status 2."""
        try:
            specs = [spec for path in paths for spec in load_optimizer_specs(path)]
            return cls(specs, fleet)
        except SpecError as exc:
            print(f"brixmesh-autoscaler: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    async def attach(self, bus: Bus) -> None:
        if not self.optimizers:
            return
        await bus.subscribe(ROUTER_STATS.pattern(), RouterStats, self._on_stats)
        await bus.subscribe(GPU_PROFILES.pattern(), GpuProfile, self._on_profile)

    def _on_stats(self, _subject: str, stats: RouterStats) -> None:
        for optimizer in self.optimizers:
            if stats.model == optimizer.spec.model:
                optimizer.shape.record(stats)

    def _on_profile(self, _subject: str, profile: GpuProfile) -> None:
        for optimizer in self.optimizers:
            optimizer.set_profile(profile)

    async def run_once(self, bus: Bus, now: float) -> int:
        published = 0
        for optimizer in self.optimizers:
            for decision in optimizer.evaluate(now):
                log.info("scale decision",
                         extra={"deployment": decision.deployment, "reason": decision.reason})
                await bus.publish(SCALE_DECISIONS.format(deployment=decision.deployment), decision)
                published += 1
            plan = optimizer.plan_to_publish(now)
            if plan is not None:
                await bus.publish(GPU_PLANS.format(model=plan.model), plan)
        return published

    def add_routes(self, app: FastAPI) -> None:
        @app.get("/v1/gpu-optimizers")
        async def list_optimizers() -> dict[str, Any]:
            return {"gpu_optimizers": [o.status() for o in self.optimizers]}

        @app.get("/v1/gpu-optimizers/{name}")
        async def get_optimizer(name: str) -> Any:
            for optimizer in self.optimizers:
                if optimizer.spec.name == name:
                    return optimizer.status()
            return JSONResponse({"error": {"message": f"gpu optimizer {name!r} does not exist",
                                           "type": "not_found_error", "param": "name",
                                           "code": "gpu_optimizer_not_found"}}, status_code=404)
