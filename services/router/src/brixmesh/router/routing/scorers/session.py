"""``session``: requests with the same ``x-session-id`` go to the same pod.

The pod is chosen by rendezvous (highest-random-weight) hashing of session id and pod name, so every router
replica picks the same pod without sharing state, and when that pod goes away only its sessions move (to
their next-highest pod). Requests without a session id score all pods equally.
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category


class SessionAffinity:
    name = "session"
    category: Category = "affinity"

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        if not ctx.session_id:
            return dict.fromkeys((pod.name for pod in pods), 1.0)
        key = ctx.session_id.encode()
        best = max(
            pods, key=lambda pod: xxhash.xxh64_intdigest(key, seed=xxhash.xxh32_intdigest(pod.name.encode()))
        )
        return {best.name: 1.0}
