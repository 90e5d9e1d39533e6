"""PodAutoscaler specs: what to scale, on which signals, with which algorithm and limits.

Defaults follow what AIBrix ships (see ``docs/autoscaling.md``). Specs come from YAML files and from the
HTTP API; both go through :func:`parse_spec`, whose :class:`SpecError` is one readable line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from brixmesh.autoscaler.algorithms import Bounds, Strategy, Tolerance
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Pod metrics are summed over the target's pods, router metrics over router replicas; either way the
# target is the amount one replica should carry, so ``sum / target`` is a replica count.
POD_METRICS = (
    "running", "waiting", "demand", "kv_usage", "prompt_tokens_per_s", "generation_tokens_per_s",
    "ttft_p50_s", "ttft_p90_s", "itl_p50_s", "itl_p90_s",
)  # fmt: skip
ROUTER_METRICS = (
    "in_flight",
    "queued",
    "demand",
    "arrival_rate",
    "prompt_token_rate",
    "completion_token_rate",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


class SpecError(ValueError):
    """A spec was rejected; ``str()`` says which field and why, in one line."""


class MetricSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["pod", "router"] = "pod"
    metric: str
    target: float = Field(gt=0)

    @model_validator(mode="after")
    def _known_metric(self) -> MetricSource:
        known = POD_METRICS if self.source == "pod" else ROUTER_METRICS
        if self.metric not in known:
            raise ValueError(
                f"unknown {self.source} metric {self.metric!r}; expected one of {', '.join(known)}"
            )
        return self

    @property
    def key(self) -> str:
        return f"{self.source}:{self.metric}"


class PodAutoscalerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    deployment: str
    role: Literal["prefill", "decode", "both"] | None = None
    """Scale only the pods of this role; None scales the whole deployment. For a role-set deployment: in
    pool mode, the one role with this function (decode by ``kv_usage`` or ``itl_p90_s``, prefill by
    ``waiting`` or ``ttft_p90_s``); in replica mode leave it out: role sets are the unit, and a metric's
    target is what one role set should carry."""
    model: str = ""
    """Served model name, for router signals while the deployment has no pod yet (scale from zero)."""
    strategy: Strategy = "kpa"
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=10, ge=1)
    metrics: list[MetricSource] = Field(
        default_factory=lambda: [MetricSource(source="pod", metric="kv_usage", target=0.5)], min_length=1
    )
    stable_window_s: float = Field(default=180.0, gt=0)
    panic_window_s: float = Field(default=60.0, gt=0)
    panic_threshold: float = Field(default=2.0, gt=1)
    scale_up_tolerance: float = Field(default=0.1, ge=0)
    scale_down_tolerance: float = Field(default=0.1, ge=0, lt=1)
    max_scale_up_rate: float = Field(default=2.0, gt=1)
    max_scale_down_rate: float = Field(default=2.0, gt=1)
    scale_up_cooldown_s: float = Field(default=0.0, ge=0)
    scale_down_cooldown_s: float = Field(default=300.0, ge=0)
    scale_to_zero: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> PodAutoscalerSpec:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be 1-63 letters, digits, '_', '-' or '.'")
        if not self.deployment:
            raise ValueError("deployment must not be empty")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.min_replicas == 0 and not self.scale_to_zero:
            raise ValueError("min_replicas 0 needs scale_to_zero: true")
        if self.panic_window_s > self.stable_window_s:
            raise ValueError(
                f"panic_window_s ({self.panic_window_s}) must not exceed stable_window_s ({self.stable_window_s})"
            )
        keys = [m.key for m in self.metrics]
        if len(set(keys)) != len(keys):
            raise ValueError(f"metric sources listed twice: {sorted({k for k in keys if keys.count(k) > 1})}")
        return self

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(up=self.scale_up_tolerance, down=self.scale_down_tolerance)

    @property
    def bounds(self) -> Bounds:
        return Bounds(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            max_scale_up_rate=self.max_scale_up_rate,
            max_scale_down_rate=self.max_scale_down_rate,
        )


def parse_spec(data: Any, *, name: str | None = None) -> PodAutoscalerSpec:
    """Validate one spec mapping; ``name`` (from a URL path) fills or must match ``data['name']``."""
    if not isinstance(data, dict):
        raise SpecError(f"a PodAutoscaler spec must be a mapping, got {type(data).__name__}")
    if name is not None:
        if data.get("name", name) != name:
            raise SpecError(f"name {data['name']!r} in the body does not match {name!r} in the path")
        data = {**data, "name": name}
    try:
        return PodAutoscalerSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(describe(exc, data.get("name"))) from None


def describe(exc: ValidationError, name: object = None) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    prefix = f"autoscaler {name!r}: " if isinstance(name, str) else "autoscaler spec: "
    return prefix + "; ".join(problems)


def read_spec_items(path: Path, list_key: str) -> list[Any]:
    """The items of a YAML file holding one spec, a list of specs, or ``{<list_key>: [...]}``; errors are
    one line."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(document, dict) and list_key in document:
        document = document[list_key]
    return document if isinstance(document, list) else [document]


def load_spec_file(path: Path) -> list[PodAutoscalerSpec]:
    """A YAML file holds one spec, a list of specs, or ``{autoscalers: [...]}``."""
    items = read_spec_items(path, "autoscalers")
    specs = []
    for item in items:
        try:
            specs.append(parse_spec(item))
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpecError(
            f"{path}: autoscaler names repeat: {sorted({n for n in names if names.count(n) > 1})}"
        )
    return specs
