"""The soft state of known pods, rebuilt from NATS (or a static file); no I/O here.

Pod events move an endpoint through added -> ready <-> draining -> removed. Metrics that arrive before the
pod's event are kept and attached when it appears. Waiters (scale from zero) are woken when a pod serving
their model becomes ready.

A pod's adapters are those its announcement lists (static ``--lora-modules``) plus those the adapter-manager's
placements say it holds; an adapter registered there is known (requests for it wait while it is loaded)
even when no pod holds it yet.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable

from brixmesh.common.messages import AdapterPlacements, PodEvent, PodInfo, PodMetrics

from brixmesh.router.routing.endpoint import Endpoint

RemovedListener = Callable[[str], None]


def endpoint_from(info: PodInfo) -> Endpoint:
    return Endpoint(
        name=info.pod,
        url=info.endpoint.rstrip("/"),
        model=info.model,
        adapters=frozenset(info.adapters),
        role=info.role,
        role_set=info.role_set,
        kv_transfer=info.kv_transfer,
        bootstrap_port=info.bootstrap_port,
        labels=dict(info.labels),
        block_size=info.block_size,
    )


class PodTable:
    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.infos: dict[str, PodInfo] = {}
        self._early_metrics: dict[str, PodMetrics] = {}
        self._waiters: defaultdict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._removed_listeners: list[RemovedListener] = []
        self.placed: dict[str, frozenset[str]] = {}
        """pod -> adapters the adapter-manager placed there (loaded and verified)."""
        self.registered_adapters: dict[str, str] = {}
        """adapter -> base model, for every adapter registered with the adapter-manager and not Failed."""
        self.version = 0
        """Bumped on every membership or state change (cheap change detection for caches)."""

    def on_removed(self, listener: RemovedListener) -> None:
        self._removed_listeners.append(listener)

    def apply(self, event: PodEvent) -> None:
        name = event.pod.pod
        if event.kind == "removed":
            self.remove(name)
            return
        endpoint = endpoint_from(event.pod)
        endpoint.adapters |= self.placed.get(name, frozenset())
        previous = self.endpoints.get(name)
        endpoint.metrics = previous.metrics if previous is not None else self._early_metrics.pop(name, None)
        endpoint.unhealthy_until = previous.unhealthy_until if previous is not None else 0.0
        endpoint.state = event.kind if event.kind != "added" or previous is None else previous.state
        self.endpoints[name] = endpoint
        self.infos[name] = event.pod
        self.version += 1
        if endpoint.state == "ready":
            self._wake(endpoint)

    def add_static(self, endpoints: Iterable[Endpoint]) -> None:
        for endpoint in endpoints:
            self.endpoints[endpoint.name] = endpoint
            self.version += 1
            self._wake(endpoint)

    def remove(self, name: str) -> None:
        self._early_metrics.pop(name, None)  # a pod removed before its first event must not keep them
        if self.endpoints.pop(name, None) is None:
            return
        self.infos.pop(name, None)
        self.version += 1
        for listener in self._removed_listeners:
            listener(name)

    def apply_placements(self, placements: AdapterPlacements) -> None:
        """The adapter-manager's whole table replaces the previous one (level-triggered)."""
        placed: dict[str, set[str]] = {}
        registered: dict[str, str] = {}
        for adapter in placements.adapters:
            if adapter.phase == "Failed":
                continue
            registered[adapter.name] = adapter.base_model
            for pod in adapter.pods:
                placed.setdefault(pod, set()).add(adapter.name)
        previous = self.placed
        self.registered_adapters = registered
        self.placed = {pod: frozenset(names) for pod, names in placed.items()}
        for name, endpoint in self.endpoints.items():
            info = self.infos.get(name)
            if info is not None:
                static = frozenset(info.adapters)
            else:  # a static endpoint: its own adapters are what is left without the previous placement
                static = endpoint.adapters - previous.get(name, frozenset())
            adapters = static | self.placed.get(name, frozenset())
            if adapters != endpoint.adapters:
                endpoint.adapters = adapters
                self.version += 1
                if endpoint.state == "ready":
                    self._wake(endpoint)

    def apply_metrics(self, metrics: PodMetrics) -> None:
        endpoint = self.endpoints.get(metrics.pod)
        if endpoint is None:
            self._early_metrics[metrics.pod] = metrics
            if len(self._early_metrics) > 10_000:  # metrics of pods that never appear must not pile up
                self._early_metrics.pop(next(iter(self._early_metrics)))
        else:
            endpoint.metrics = metrics

    def all(self) -> list[Endpoint]:
        return list(self.endpoints.values())

    def any_ready(self) -> bool:
        return any(endpoint.state == "ready" for endpoint in self.endpoints.values())

    def models(self) -> dict[str, str | None]:
        """Model names that ready pods serve -> the base model (None for base models themselves)."""
        served: dict[str, str | None] = {}
        for endpoint in self.endpoints.values():
            if endpoint.state != "ready":
                continue
            served[endpoint.model] = None
            for adapter in endpoint.adapters:
                served.setdefault(adapter, endpoint.model)
        return served

    def base_model_of(self, model: str) -> str | None:
        """The base model behind ``model`` if any known pod (in any state) serves it, else None."""
        for endpoint in self.endpoints.values():
            if endpoint.model == model:
                return model
            if model in endpoint.adapters:
                return endpoint.model
        return self.registered_adapters.get(model)

    async def wait_ready(self, model: str, timeout_s: float) -> bool:
        """Wait until a pod serving ``model`` becomes ready; False on timeout."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[model].add(future)
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(model)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[model]

    def waiting(self, model: str) -> int:
        return len(self._waiters.get(model, ()))

    def waiting_models(self) -> dict[str, int]:
        return {model: len(waiters) for model, waiters in self._waiters.items()}

    def _wake(self, endpoint: Endpoint) -> None:
        for model in (endpoint.model, *endpoint.adapters):
            for future in self._waiters.get(model, ()):
                if not future.done():
                    future.set_result(None)
