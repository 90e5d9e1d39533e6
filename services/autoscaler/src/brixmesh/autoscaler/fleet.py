"""What the autoscaler knows about the fleet: pods from ``pods.*`` events, their latest normalized metrics,
and the routers' latest request statistics per model."""

from __future__ import annotations

from dataclasses import dataclass

from brixmesh.autoscaler.spec import PodAutoscalerSpec
from brixmesh.common.messages import PodEvent, PodInfo, PodMetrics, RouterStats


@dataclass(slots=True)
class PodEntry:
    info: PodInfo
    state: str
    """added (starting), ready, or draining."""


class Fleet:
    def __init__(self) -> None:
        self.pods: dict[str, PodEntry] = {}
        self.models: dict[str, str] = {}
        """deployment -> model, remembered after its last pod is gone (scale from zero needs it)."""
        self.metrics: dict[str, PodMetrics] = {}

    def apply(self, event: PodEvent) -> None:
        """One ``pods.*`` event, or an entry of the orchestrator's ``pods.list`` delivered as one."""
        info = event.pod
        self.models[info.deployment] = info.model
        if event.kind == "removed":
            self.pods.pop(info.pod, None)
            self.metrics.pop(info.pod, None)
            return
        entry = self.pods.get(info.pod)
        if entry is not None and entry.state == "draining" and event.kind != "draining":
            return  # a late ready/added must not resurrect a pod that is going away
        self.pods[info.pod] = PodEntry(info=info, state=event.kind)

    def scrape_targets(self) -> list[PodInfo]:
        """Ready and draining pods that export metrics (draining pods still serve their last requests)."""
        return [e.info for e in self.pods.values() if e.state in ("ready", "draining") and e.info.metrics_url]

    def record(self, metrics: PodMetrics) -> None:
        if metrics.pod in self.pods:
            self.metrics[metrics.pod] = metrics

    def targeted(self, spec: PodAutoscalerSpec) -> list[PodEntry]:
        return [
            e for e in self.pods.values()
            if e.info.deployment == spec.deployment and (spec.role is None or e.info.role == spec.role)
        ]  # fmt: skip

    def live_count(self, deployment: str) -> int:
        """Pods of ``deployment`` starting or ready (not draining)."""
        return sum(
            1 for e in self.pods.values() if e.info.deployment == deployment and e.state in ("added", "ready")
        )

    def model_of(self, spec: PodAutoscalerSpec) -> str:
        return spec.model or self.models.get(spec.deployment, "")


class RouterSignals:
    """Latest :class:`RouterStats` per (model, router); a router silent for ``expiry_windows`` windows is dropped."""

    def __init__(self, expiry_windows: float = 3.0) -> None:
        self.expiry_windows = expiry_windows
        self._latest: dict[tuple[str, str], RouterStats] = {}

    def record(self, stats: RouterStats) -> None:
        self._latest[(stats.model, stats.router)] = stats

    def fresh(self, model: str, now: float) -> list[RouterStats]:
        out = []
        for key, stats in list(self._latest.items()):
            if now - stats.ts > self.expiry_windows * max(stats.window_s, 1.0):
                del self._latest[key]
            elif key[0] == model:
                out.append(stats)
        return out
