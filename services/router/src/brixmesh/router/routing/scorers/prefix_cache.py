"""``prefix-cache`` (approximate): the share of the prompt's leading blocks this router fleet already sent to
each pod. Blocks are recorded for the chosen pod after routing and shared with the other router replicas
(``ctx.prefix_hashes`` travels on ``router.routing``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.prefix_index import PrefixIndex, prefix_hashes
from brixmesh.router.routing.scorer import Category


class PrefixCache:
    name = "prefix-cache"
    category: Category = "affinity"

    def __init__(self, index: PrefixIndex, block_chars: int = 64) -> None:
        self.index = index
        self.block_chars = block_chars

    def hashes(self, ctx: RequestContext) -> list[int]:
        if ctx.prefix_hashes is None:
            ctx.prefix_hashes = prefix_hashes(
                ctx.routing_text, ctx.model, self.block_chars, cache_salt=ctx.cache_salt
            )
        return ctx.prefix_hashes

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        hashes = self.hashes(ctx)
        if not hashes:
            return {}
        matched = self.index.match(hashes, [pod.name for pod in pods], time.monotonic())
        total = len(hashes)
        return {name: blocks / total for name, blocks in matched.items()}

    def on_routed(self, ctx: RequestContext, pod: Endpoint) -> None:
        self.index.insert(self.hashes(ctx), pod.name, time.monotonic())
