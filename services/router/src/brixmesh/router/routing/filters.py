"""Filters: drop endpoints that cannot serve a request, before any scoring."""

from __future__ import annotations

from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint

ROUTABLE_ROLES = frozenset({"both", "decode"})
PREFILL_ROLES = frozenset({"prefill"})


def candidates(
    ctx: RequestContext, pods: Sequence[Endpoint], now: float, roles: frozenset[str] = ROUTABLE_ROLES
) -> list[Endpoint]:
    """Ready, healthy pods of one of ``roles`` that serve the requested model or adapter."""
    return [
        pod
        for pod in pods
        if pod.state == "ready"
        and pod.unhealthy_until <= now
        and pod.role in roles
        and pod.serves(ctx.model)
    ]


def serving(model: str, pods: Sequence[Endpoint]) -> list[Endpoint]:
    """Every known pod serving ``model`` in any state (to tell 'unknown model' from 'no pod ready')."""
    return [pod for pod in pods if pod.serves(model)]
