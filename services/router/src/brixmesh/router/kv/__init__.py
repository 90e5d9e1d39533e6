"""Precise KV-event-based routing (owned by the KV engineer): extension point of the router.

``brixmesh.router.app.build_service`` calls :func:`attach` once, explicitly, while wiring the service. It is
where this package plugs in state that needs the bus and readiness:

- ``service``: the :class:`~brixmesh.common.service.Service` (``on_start`` hooks get the connected bus,
  ``add_readiness`` gates ``/readyz``, ``spawn`` runs background tasks, ``registry`` takes metrics,
  ``app`` takes admin routes, ``settings`` is the :class:`~brixmesh.router.settings.RouterSettings`);
- ``registry``: the :class:`~brixmesh.router.routing.StrategyRegistry` (``register_scorer("kv-aware", ...)``,
  and ``registry.env.tokenizer`` for ``RequestContext.token_ids()``);
- ``pods``: the :class:`~brixmesh.router.discovery.pod_table.PodTable` (pod endpoints, block sizes, removals
  via ``pods.on_removed``).

What it adds: the global prefix index (:mod:`.index`) kept by :mod:`.follower` from JetStream (the router is
not ready until the index is rebuilt), the ``kv-aware`` and ``cost-model`` scorers
(:mod:`brixmesh.router.routing.scorers`),
the tokenizer behind ``RequestContext.token_ids()`` (:mod:`.tokenizer`), metrics (:mod:`.metrics`) and
``/admin/kv/*`` (:mod:`.admin`). Settings: ``BRIXMESH_KV_*`` (:mod:`.settings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from brixmesh.common.runtime import tune_gc
from brixmesh.common.settings import load_or_exit

from brixmesh.router.kv.admin import add_admin_routes
from brixmesh.router.kv.follower import IndexFollower
from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.metrics import KvMetrics
from brixmesh.router.kv.settings import KvSettings
from brixmesh.router.kv.tokenizer import PromptTokenizer, TokenizerError, TurnPrefix
from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.scorers.cost_model import CostModel
from brixmesh.router.routing.scorers.kv_aware import KvAware

if TYPE_CHECKING:
    from brixmesh.common.service import Service

    from brixmesh.router.discovery.pod_table import PodTable
    from brixmesh.router.routing.registry import StrategyRegistry


@dataclass(slots=True)
class KvModule:
    """What :func:`attach` wired, for tests and admin: ``follower`` exists once the service has started."""

    index: PrefixIndex
    tokenizer: PromptTokenizer
    metrics: KvMetrics
    follower: IndexFollower | None = None


def attach(
    service: Service, registry: StrategyRegistry, pods: PodTable, settings: KvSettings | None = None
) -> KvModule:
    """Register the ``kv-aware`` scorer and its index subscriber on ``service`` (see the module docstring)."""
    settings = settings or load_or_exit(KvSettings, f"brixmesh-{service.name}")
    index = PrefixIndex(settings.speculative_ttl_s)
    metrics = KvMetrics(service.registry)

    def engine_url(model: str) -> str | None:
        for endpoint in pods.endpoints.values():
            if endpoint.state == "ready" and endpoint.serves(model):
                return endpoint.url
        return None

    tokenizer = PromptTokenizer(
        settings.tokenizer_dirs, engine_url, prefix_cache_bytes=settings.chat_prefix_cache_bytes
    )
    module = KvModule(index, tokenizer, metrics)

    async def tokenize(ctx: RequestContext) -> Sequence[int] | None:
        try:
            tokens = await tokenizer.tokens(ctx.base_model or ctx.model, prompt=ctx.prompt_text, messages=ctx.messages)
        except TokenizerError:
            tokens = None
        if tokens is None:
            metrics.tokenize_failures.inc()
        return tokens

    if registry.env.tokenizer is None:
        registry.env.tokenizer = tokenize
    def turn_prefix(ctx: RequestContext) -> TurnPrefix | None:
        return tokenizer.turn_prefix(ctx.base_model or ctx.model, ctx.messages or [])

    registry.register_scorer(
        "kv-aware",
        lambda env: KvAware(
            index,
            speculative=settings.speculative,
            observe_lookup=metrics.lookup_seconds.observe,
            turns=turn_prefix if settings.turn_routing else None,
        ),
    )
    registry.register_scorer(
        "cost-model", lambda env: CostModel(KvAware(index, speculative=settings.speculative))
    )
    pods.on_removed(index.clear_pod)
    add_admin_routes(service.app, index, tokenizer, pods.base_model_of)
    service.add_readiness("kv-index", lambda: module.follower is not None and module.follower.ready)

    async def start(service: Service) -> None:
        tune_gc()  # process-wide: the index holds millions of entries and the event path allocates a lot
        follower = IndexFollower(service.bus, index, on_lag=metrics.event_lag_seconds.observe)
        metrics.watch(index, follower, tokenizer)
        await follower.start()
        module.follower = follower

    async def stop(_service: Service) -> None:
        if module.follower is not None:
            await module.follower.stop()

    service.on_start(start)
    service.on_stop(stop)
    return module
