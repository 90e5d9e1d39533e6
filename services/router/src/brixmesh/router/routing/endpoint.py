"""The router's view of one engine pod: identity and reachability from discovery, load from metrics and
from the router's own in-flight accounting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from brixmesh.common.messages import PodMetrics

EndpointState = Literal["added", "ready", "draining"]


@dataclass(slots=True, eq=False)
class Endpoint:
    name: str
    url: str
    model: str
    adapters: frozenset[str] = frozenset()
    role: str = "both"
    role_set: str = ""
    """The pod's role set: the ``pd`` strategy pairs prefill and decode pods of one role set."""
    kv_transfer: str = ""
    """How its KV cache moves between prefill and decode (``PodInfo.kv_transfer``)."""
    bootstrap_port: int = 0
    """SGLang prefill pods: the port of their KV bootstrap server."""
    state: EndpointState = "ready"
    labels: dict[str, str] = field(default_factory=dict)
    block_size: int = 0
    metrics: PodMetrics | None = None
    in_flight: int = 0
    """Requests in flight on this pod from every router replica (see ``LoadTracker``)."""
    recent: float = 0.0
    """Requests sent to this pod lately by every router replica, decayed (see ``LoadTracker.recent``)."""
    unhealthy_until: float = 0.0
    """Monotonic time until which connection failures keep this pod out of routing."""

    def serves(self, model: str) -> bool:
        return model == self.model or model in self.adapters

    @property
    def queue_load(self) -> float:
        """Work on the pod as the router can best tell: in-flight plus the engine's waiting queue."""
        waiting = self.metrics.waiting if self.metrics is not None and not self.metrics.stale else 0.0
        return self.in_flight + waiting
