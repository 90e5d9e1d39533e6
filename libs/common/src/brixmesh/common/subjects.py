"""The one place that names every NATS subject and the schema of its messages.

A subject is a dot-separated template; ``{name}`` tokens are filled with :func:`token`-sanitized values,
so pod names with dots or spaces never split a subject. ``docs/subjects.md`` is generated from
:data:`ALL` (``python -m brixmesh.common.subjects > docs/subjects.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec.structs

from brixmesh.common import messages as m

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def token(value: str) -> str:
    """Make ``value`` usable as one subject token (dots, wildcards and spaces become ``_``)."""
    if not value:
        raise ValueError("subject token must not be empty")
    return _UNSAFE.sub("_", value)


@dataclass(frozen=True)
class Subject:
    template: str
    schema: type[Any]
    description: str
    rate: str = "low"
    stream: str | None = None
    """JetStream stream that retains this subject, if any."""
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = "^" + _PLACEHOLDER.sub(r"([^.]+)", re.escape(self.template).replace(r"\{", "{").replace(r"\}", "}")) + "$"
        object.__setattr__(self, "_regex", re.compile(pattern))

    @property
    def tokens(self) -> list[str]:
        return _PLACEHOLDER.findall(self.template)

    def format(self, **values: str) -> str:
        missing = set(self.tokens) - values.keys()
        if missing:
            raise ValueError(f"subject {self.template} needs {sorted(missing)}")
        return _PLACEHOLDER.sub(lambda mt: token(values[mt.group(1)]), self.template)

    def pattern(self, **values: str) -> str:
        """Subscription pattern: given tokens filled in, the rest ``*``, a trailing open token ``>``."""
        parts = []
        for part in self.template.split("."):
            name = _PLACEHOLDER.fullmatch(part)
            parts.append(token(values[name.group(1)]) if name and name.group(1) in values else "*" if name else part)
        return ".".join(parts)

    def matches(self, subject: str) -> bool:
        return self._regex.match(subject) is not None

    def parse(self, subject: str) -> dict[str, str]:
        found = self._regex.match(subject)
        if found is None:
            raise ValueError(f"{subject!r} is not a {self.template} subject")
        return dict(zip(self.tokens, found.groups()))


KV_EVENTS_STREAM = "KV_EVENTS"
KV_SNAPSHOTS_STREAM = "KV_SNAPSHOTS"

MESH_HEARTBEAT = Subject(
    "mesh.heartbeat.{service}", m.Heartbeat, "Every service instance, every few seconds: who runs, since when, ready or not."
)
MESH_PING = Subject("mesh.ping", m.Ping, "Request: every service instance replies with its Heartbeat.")
PODS = Subject(
    "pods.{kind}.{deployment}.{pod}",
    m.PodEvent,
    "Pod lifecycle from the orchestrator: added, ready, draining, removed; carries endpoints and labels.",
)
PODS_LIST = Subject(
    "pods.list",
    m.PodListRequest,
    "Request: the orchestrator replies with a PodList of its current pods, so late starters need not wait.",
)
METRICS_PODS = Subject(
    "metrics.pods.{pod}", m.PodMetrics, "Normalized engine metrics scraped by the autoscaler (stale flag on failure).", "high"
)
SCALE_DECISIONS = Subject(
    "scale.decisions.{deployment}", m.ScaleDecision, "Autoscaler verdicts with reason; the orchestrator applies them."
)
DEPLOYMENTS_STATUS = Subject(
    "deployments.status.{deployment}",
    m.DeploymentStatus,
    "The orchestrator's observed fleet per deployment (desired, ready, generation, last decision taken); "
    "on change and every announce interval.",
)
GPU_DECISIONS = Subject(
    "gpu.decisions.{node}",
    m.GpuDecision,
    "A gpu-doctor's verdict on an accelerator or engine fault of its node, with evidence; the orchestrator "
    "drains, replaces or cordons accordingly.",
)
ROUTER_STATS = Subject(
    "router.stats.{model}.{router}", m.RouterStats, "Per-second request statistics of each router replica per model.", "medium"
)
ROUTER_ROUTING = Subject(
    "router.routing.{router}",
    m.RoutingEventBatch,
    "Routing decisions and completions of each router replica, mirrored by the others (shared load, prefixes).",
    "high",
)
GPU_PROFILES = Subject(
    "gpu.profiles.{model}.{gpu}",
    m.GpuProfile,
    "A model's measured capacity per length bucket on one GPU type, and its cost (brixmesh profile).",
)
GPU_PLANS = Subject(
    "gpu.plans.{model}",
    m.GpuPlan,
    "The autoscaler optimizer's plan for a model (replicas per GPU type, share of each length bucket per "
    "GPU type), on every change and every few seconds; the router's gpu-plan scorer follows it.",
)
KV_EVENTS = Subject(
    "kv.events.{model}.{pod}",
    m.KvEventBatch,
    "Engine KV-cache events normalized by kv-index, one batch per engine step; retained in JetStream.",
    "high",
    KV_EVENTS_STREAM,
)
KV_SNAPSHOTS = Subject(
    "kv.snapshots.{model}.{pod}",
    m.KvSnapshot,
    "Periodic per-pod snapshot of cached blocks (chunked); bounds what a new router replays from kv.events.",
    "low",
    KV_SNAPSHOTS_STREAM,
)

ADAPTERS_PLACEMENTS = Subject(
    "adapters.placements",
    m.AdapterPlacements,
    "The adapter-manager's registered LoRA adapters and the pods holding each; on change and every announce "
    "interval. Routers route an adapter only to its pods.",
)
ADAPTERS_LIST = Subject(
    "adapters.list",
    m.AdapterPlacementsRequest,
    "Request: the adapter-manager replies with its AdapterPlacements, so a starting router need not wait.",
)

ALL: tuple[Subject, ...] = (
    MESH_HEARTBEAT, MESH_PING, PODS, PODS_LIST, METRICS_PODS, SCALE_DECISIONS, DEPLOYMENTS_STATUS,
    GPU_DECISIONS, ROUTER_STATS, ROUTER_ROUTING, GPU_PROFILES, GPU_PLANS, KV_EVENTS, KV_SNAPSHOTS,
    ADAPTERS_PLACEMENTS, ADAPTERS_LIST,
)


def schema_for(subject: str) -> Subject | None:
    """The declared subject a concrete subject belongs to, or None (JetStream API, inboxes, foreign apps)."""
    for declared in ALL:
        if declared.matches(subject):
            return declared
    return None


def render_markdown() -> str:
    lines = [
        "# NATS subjects",
        "",
        "Generated from `brixmesh.common.subjects` (`python -m brixmesh.common.subjects > docs/subjects.md`).",
        "Payloads are msgpack-encoded msgspec structs; `array_like` schemas are positional arrays on the wire.",
        "",
        "| Subject | Schema | Rate | JetStream | Meaning |",
        "|---|---|---|---|---|",
    ]
    for s in ALL:
        lines.append(f"| `{s.template}` | `{s.schema.__name__}` | {s.rate} | {s.stream or '-'} | {s.description} |")
    lines += ["", "## Schemas", ""]
    seen: set[type] = set()
    for s in ALL:
        for struct in _structs(s.schema):
            if struct in seen:
                continue
            seen.add(struct)
            lines.append(f"### `{struct.__name__}`" + (" (array-like)" if struct.__struct_config__.array_like else ""))
            lines.append("")
            if struct.__doc__:
                lines += [struct.__doc__.strip(), ""]
            hints = msgspec.structs.fields(struct)
            lines += [f"- `{f.name}`: `{_type_name(f.type)}`" for f in hints]
            lines.append("")
    return "\n".join(lines)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("brixmesh.common.messages.", "").replace("typing.", "")


def _structs(schema: type) -> list[type]:
    found = [schema]
    for f in msgspec.structs.fields(schema):
        for candidate in _walk_type(f.type):
            if candidate not in found:
                found += [c for c in _structs(candidate) if c not in found]
    return found


def _walk_type(tp: Any) -> list[type]:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [tp]
    return [t for arg in getattr(tp, "__args__", ()) for t in _walk_type(arg)]


if __name__ == "__main__":
    print(render_markdown())
