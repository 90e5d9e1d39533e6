"""``pd``: prefill/decode disaggregation. Pure pair choice; the gateway's ``http.pd`` drives the protocol.

A prefill pod scores by prefix affinity (the approximate prefix index, restrained by the load guard) and
load; a decode pod by load and KV-cache usage. A pair is a prefill pod and a decode pod of the same role set
(replica mode); pods without a role set pair with any pod of the other role. The plan lists prefill pods
by their best pair's combined score, each with its decode pods best first: the gateway tries the first
prefill pod, then the next, then serves the request colocated on the best decode pod.

As a scorer, ``pd`` ranks the decode (and colocated) pods the ordinary pipeline finds, so a fleet without
prefill pods is served as with a load-and-KV-usage strategy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.picker import LoadGuard
from brixmesh.router.routing.prefix_index import PrefixIndex, prefix_hashes
from brixmesh.router.routing.scorer import Category


@dataclass(slots=True)
class PdPlan:
    pairs: list[tuple[Endpoint, list[Endpoint]]]
    """Prefill pods best first, each with the decode pods it pairs with, best first."""

    @property
    def prefills(self) -> list[Endpoint]:
        return [prefill for prefill, _ in self.pairs]


def pairable(prefill: Endpoint, decode: Endpoint) -> bool:
    return not prefill.role_set or not decode.role_set or prefill.role_set == decode.role_set


def _load_scores(pods: Sequence[Endpoint]) -> dict[str, float]:
    """1 for the least loaded pod, falling towards 0 as a pod carries more than the others."""
    loads = {pod.name: pod.queue_load for pod in pods}
    most = max(loads.values(), default=0.0)
    return {name: 1.0 - load / (most + 1.0) for name, load in loads.items()}


class PdPairing:
    name = "pd"
    category: Category = "distribution"

    def __init__(self, index: PrefixIndex, guard: LoadGuard, block_chars: int = 64) -> None:
        self.index = index
        self.guard = guard
        self.block_chars = block_chars

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        """Decode-side score: load and free KV cache, equally weighted."""
        load = _load_scores(pods)
        return {pod.name: (load[pod.name] + _free_kv(pod)) / 2 for pod in pods}

    def prefill_scores(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        """Prefix affinity (skipped for overloaded pods) and load, equally weighted."""
        load = _load_scores(pods)
        hashes = self._hashes(ctx)
        matched = self.index.match(hashes, [pod.name for pod in pods], time.monotonic()) if hashes else {}
        overloaded = self.guard.overloaded(pods)
        scores = {}
        for pod in pods:
            affinity = 0.0 if pod.name in overloaded else matched.get(pod.name, 0) / max(len(hashes), 1)
            scores[pod.name] = (affinity + load[pod.name]) / 2
        return scores

    def plan(
        self,
        ctx: RequestContext,
        prefills: Sequence[Endpoint],
        decodes: Sequence[Endpoint],
        decode_scores: dict[str, float],
    ) -> PdPlan:
        """Pairs for ``decodes`` ranked by ``decode_scores`` (the pipeline's totals); prefill pods that pair
        with no decode pod are left out."""
        if not prefills or not decodes:
            return PdPlan([])
        prefill_scores = self.prefill_scores(ctx, prefills)
        ranked = sorted(decodes, key=lambda pod: decode_scores.get(pod.name, 0.0), reverse=True)
        scored: list[tuple[float, Endpoint, list[Endpoint]]] = []
        for prefill in prefills:
            partners = [decode for decode in ranked if pairable(prefill, decode)]
            if partners:
                best = prefill_scores[prefill.name] + decode_scores.get(partners[0].name, 0.0)
                scored.append((best, prefill, partners))
        scored.sort(key=lambda item: item[0], reverse=True)
        return PdPlan([(prefill, partners) for _, prefill, partners in scored])

    def prefilled(self, ctx: RequestContext, pod: Endpoint) -> None:
        """The prompt's blocks now live on ``pod``: later turns of the conversation prefer it."""
        hashes = self._hashes(ctx)
        if hashes:
            self.index.insert(hashes, pod.name, time.monotonic())

    def _hashes(self, ctx: RequestContext) -> list[int]:
        if ctx.prefix_hashes is None:
            ctx.prefix_hashes = prefix_hashes(
                ctx.routing_text, ctx.model, self.block_chars, cache_salt=ctx.cache_salt
            )
        return ctx.prefix_hashes


def _free_kv(pod: Endpoint) -> float:
    metrics = pod.metrics
    if metrics is None or metrics.stale:
        return 0.5  # unknown: neither preferred nor avoided
    return min(1.0, max(0.0, 1.0 - metrics.kv_usage))
