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

Until the KV module lands it registers nothing, and the router works with its approximate strategies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brixmesh.common.service import Service

    from brixmesh.router.discovery.pod_table import PodTable
    from brixmesh.router.routing.registry import StrategyRegistry


def attach(service: Service, registry: StrategyRegistry, pods: PodTable) -> None:
    """Register the ``kv-aware`` scorer and its index subscriber on ``service`` (see the module docstring)."""
