"""``kv-aware`` (precise): the share of the prompt's leading blocks each pod holds in its KV cache, from the
engines' own KV events (:mod:`brixmesh.router.kv`). A GPU block counts 1, a CPU-tier block 0.8; blocks of a
request just sent to a pod count there until its events arrive (speculative, short TTL).

Token ids come from ``ctx.token_ids()`` (the KV module's tokenizer); a request that cannot be tokenized scores
nothing, so the other scorers of the strategy decide.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from brixmesh.router.kv.index import PodMatch, PrefixIndex
from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category

_PENDING_LIMIT = 4096


class KvAware:
    name = "kv-aware"
    category: Category = "affinity"

    def __init__(
        self,
        index: PrefixIndex,
        *,
        speculative: bool = True,
        observe_lookup: Callable[[float], None] | None = None,
    ) -> None:
        self.index = index
        self.speculative = speculative
        self._observe = observe_lookup
        # request id -> (token ids, block size -> hashes); bounded, as a request may fail before on_routed.
        self._requests: OrderedDict[str, tuple[Sequence[int], dict[int, list[int]]]] = OrderedDict()

    async def prepare(self, ctx: RequestContext) -> None:
        tokens = await ctx.token_ids()
        if tokens:
            self._requests[ctx.request_id] = (tokens, {})
            if len(self._requests) > _PENDING_LIMIT:
                self._requests.popitem(last=False)

    def _hashes(self, ctx: RequestContext, block_size: int) -> list[int]:
        found = self._requests.get(ctx.request_id)
        if found is None or block_size <= 0:
            return []
        tokens, by_size = found
        hashes = by_size.get(block_size)
        if hashes is None:
            hashes = by_size[block_size] = self.index.prompt_hashes(
                tokens, block_size, ctx.base_model or ctx.model, ctx.adapter, ctx.cache_salt
            )
        return hashes

    def _pod_block_size(self, pod: Endpoint) -> int:
        return self.index.block_size(pod.name) or pod.block_size

    def _matches(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, tuple[PodMatch, int]]:
        """Each pod's match and the prompt's block count (at the pod's block size); pods holding nothing are
        left out."""
        started = time.perf_counter()
        by_size: dict[int, list[str]] = {}
        for pod in pods:
            by_size.setdefault(self._pod_block_size(pod), []).append(pod.name)
        found: dict[str, tuple[PodMatch, int]] = {}
        for block_size, names in by_size.items():
            hashes = self._hashes(ctx, block_size)
            if not hashes:
                continue
            for pod, match in self.index.match(hashes, block_size, names).items():
                found[pod] = (match, len(hashes))
        if self._observe is not None:
            self._observe(time.perf_counter() - started)
        return found

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        if ctx.request_id not in self._requests:
            return {}
        return {pod: match.weighted / total for pod, (match, total) in self._matches(ctx, pods).items()}

    def prompt_tokens(self, ctx: RequestContext) -> int:
        """The prompt's token count once :meth:`prepare` tokenized it, else 0."""
        found = self._requests.get(ctx.request_id)
        return len(found[0]) if found is not None else 0

    def cached_tokens(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, int]:
        """Leading prompt tokens each pod holds in any medium (pods holding nothing are left out)."""
        if ctx.request_id not in self._requests:
            return {}
        return {pod: match.tokens for pod, (match, _total) in self._matches(ctx, pods).items()}

    def on_routed(self, ctx: RequestContext, pod: Endpoint) -> None:
        if self.speculative:
            hashes = self._hashes(ctx, self._pod_block_size(pod))
            if hashes:
                self.index.add_speculative(pod.name, hashes)
        self._requests.pop(ctx.request_id, None)
