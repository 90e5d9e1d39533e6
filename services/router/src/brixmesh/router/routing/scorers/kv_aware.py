"""``kv-aware`` (precise): the share of the prompt's leading blocks each pod holds in its KV cache, from the
engines' own KV events (:mod:`brixmesh.router.kv`). A GPU block counts 1, a CPU-tier block 0.8; blocks of a
request just sent to a pod count there until its events arrive (speculative, short TTL).

Token ids come from ``ctx.token_ids()`` (the KV module's tokenizer); a request that cannot be tokenized scores
nothing, so the other scorers of the strategy decide.

A chat request continuing a conversation whose earlier turn the tokenizer kept (``turns``) is scored from that
turn's ids, hashed once per turn, against an estimate of the whole prompt's blocks: the new messages' blocks
are on no pod yet (they are new), so the ranking is the same and the request leaves without waiting for the
template and the encoding. The pod that served the conversation's previous turn is also credited with the
rest of that prompt and the answer it computed (estimated from their length), as its events would show them.
Once the request is written to its pod, while the engine works on it, the tokenizer either completes its ids
(the template and the encoding), whose blocks then become speculative entries on that pod, or only remembers
the turn for the conversation's next one (:meth:`~brixmesh.router.kv.tokenizer.TurnPrefix.sent`), and the
kept turn's blocks are the speculative entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from brixmesh.router.kv.hashing import first_seed
from brixmesh.router.kv.index import PodMatch, PrefixIndex
from brixmesh.router.kv.tokenizer import ChatIds, TokenizerError, TurnPrefix
from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category

_PENDING_LIMIT = 4096
_MATCH_ENDS_LIMIT = 4096
_HOME_BONUS = 0.01
"""Added to the score of the pod a shared prefix was last sent to: it settles ties, and outweighs no more
than a block or two of difference in what pods hold."""

TurnSource = Callable[[RequestContext], "TurnPrefix | None"]
"""The kept turn a chat request continues (:meth:`brixmesh.router.kv.tokenizer.PromptTokenizer.turn_prefix`)."""


class _Pending:
    """A request between :meth:`KvAware.prepare` and its speculative entries."""

    __slots__ = ("tokens", "length", "hashes", "turn", "shared_end")

    def __init__(self, tokens: Sequence[int], length: int, turn: TurnPrefix | None = None) -> None:
        self.tokens = tokens
        self.length = length
        """Prompt tokens: exact, or estimated while only the kept turn is known."""
        self.hashes: dict[int, list[int]] = {}
        """block size -> hashes of ``tokens``' full blocks"""
        self.turn = turn
        self.shared_end: int | None = None
        """The last block of the shared prefix this request's match ends at (see ``KvAware._only_shared``)."""


def _credit_answer(
    matches: dict[str, PodMatch], turn: TurnPrefix, hashes: Sequence[int], block_size: int, blocks: int
) -> None:
    """A continued turn is scored from the kept turn's blocks, but the pod that served the conversation's
    previous turn also computed the rest of that prompt and its answer, which this prompt repeats: that pod,
    if it still holds the whole kept turn, is credited with those blocks too, as the precise scores would
    find them from its events."""
    pod = turn.last_pod
    match = matches.get(pod) if pod is not None else None
    if match is None or match.blocks < len(hashes):
        return
    credit = min(turn.computed_tokens // block_size, blocks) - match.blocks
    if credit > 0:
        matches[pod] = PodMatch(match.blocks + credit, match.weighted + credit, block_size)


def _conversation_pod(pending: _Pending) -> str | None:
    """The pod that served the earlier turn of this chat request's conversation (when the tokenizer kept or
    remembered it)."""
    if pending.turn is not None:
        return pending.turn.last_pod
    prefix = pending.tokens.prefix if isinstance(pending.tokens, ChatIds) else None
    return prefix.served_by if prefix is not None else None


class KvAware:
    name = "kv-aware"
    category: Category = "affinity"

    def __init__(
        self,
        index: PrefixIndex,
        *,
        speculative: bool = True,
        observe_lookup: Callable[[float], None] | None = None,
        turns: TurnSource | None = None,
    ) -> None:
        self.index = index
        self.speculative = speculative
        self._observe = observe_lookup
        self._turns = turns
        # bounded, as a request may fail before its hooks run
        self._requests: OrderedDict[str, _Pending] = OrderedDict()
        self._match_ends: OrderedDict[int, str | None] = OrderedDict()
        """Last blocks of recent requests' longest matches, least recently seen first -> the pod the last
        request whose match ended there was sent to."""

    async def prepare(self, ctx: RequestContext) -> None:
        turn = None
        if self._turns is not None and ctx.messages is not None and ctx.prompt_token_ids is None:
            turn = self._turns(ctx)
        if turn is not None:
            pending = _Pending(turn.ids, turn.estimated_tokens, turn)
        else:
            tokens = await ctx.token_ids()
            if not tokens:
                return
            pending = _Pending(tokens, len(tokens))
        self._requests[ctx.request_id] = pending
        if len(self._requests) > _PENDING_LIMIT:
            self._requests.popitem(last=False)

    def _hashes(self, ctx: RequestContext, pending: _Pending, block_size: int) -> list[int]:
        hashes = pending.hashes.get(block_size)
        if hashes is None:
            model = ctx.base_model or ctx.model
            turn = pending.turn
            if turn is None:
                hashes = self._prompt_hashes(ctx, pending.tokens, block_size)
            else:  # the kept turn's hashes, computed once for every request continuing it
                kept = turn.prefix.hashes
                if kept is None:
                    kept = turn.prefix.hashes = {}
                key = (block_size, first_seed(model, ctx.adapter, ctx.cache_salt))
                hashes = kept.get(key)
                if hashes is None:
                    hashes = kept[key] = self.index.prompt_hashes(
                        pending.tokens, block_size, model, ctx.adapter, ctx.cache_salt
                    )
            pending.hashes[block_size] = hashes
        return hashes

    def _pod_block_size(self, pod: Endpoint) -> int:
        return self.index.block_size(pod.name) or pod.block_size

    def _matches(
        self, ctx: RequestContext, pending: _Pending, pods: Sequence[Endpoint]
    ) -> dict[str, tuple[PodMatch, int]]:
        """Each pod's match and the prompt's block count (at the pod's block size); pods holding nothing are
        left out."""
        started = time.perf_counter()
        by_size: dict[int, list[str]] = {}
        for pod in pods:
            by_size.setdefault(self._pod_block_size(pod), []).append(pod.name)
        found: dict[str, tuple[PodMatch, int]] = {}
        for block_size, names in by_size.items():
            if block_size <= 0:
                continue
            hashes = self._hashes(ctx, pending, block_size)
            if not hashes:
                continue
            blocks = max(len(hashes), pending.length // block_size)
            matches = self.index.match(hashes, block_size, names)
            if pending.turn is not None:
                _credit_answer(matches, pending.turn, hashes, block_size, blocks)
            for pod, match in matches.items():
                found[pod] = (match, blocks)
        if self._observe is not None:
            self._observe(time.perf_counter() - started)
        return found

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        pending = self._requests.get(ctx.request_id)
        if pending is None:
            return {}
        found = self._matches(ctx, pending, pods)
        ctx.matches_only_shared_prefix = self._only_shared(found, pending)
        scores = {pod: match.weighted / total for pod, (match, total) in found.items()}
        if pending.shared_end is not None:
            # a shared prefix stays on the pod it was last sent to while pods tie (the load guard's lead
            # moves it): spreading it over every pod that holds it would keep a copy hot on each
            home = self._match_ends.get(pending.shared_end)
            if home in scores:
                scores[home] = min(scores[home] + _HOME_BONUS, 1.0)
        return scores

    def _only_shared(self, found: dict[str, tuple[PodMatch, int]], pending: _Pending) -> bool:
        """Whether the longest match on any pod ends at the block where an earlier request's longest match
        ended: a prefix several prompts share and then leave (a system prompt), not a conversation's own
        history. A chat turn whose conversation's previous turn was served by the pod with the longest match
        is that history, even when too little was added since for its match to end further. A prompt no pod
        holds any of counts as shared."""
        if not found:
            return True
        match, _blocks = max(found.values(), key=lambda item: item[0].blocks)
        hashes = pending.hashes.get(match.block_size)
        if not hashes or not 0 < match.blocks <= len(hashes):
            return False
        end = hashes[match.blocks - 1]
        own = _conversation_pod(pending)
        if own is not None and own in found and found[own][0].blocks == match.blocks:
            if end not in self._match_ends:
                self._remember(end)
            return False
        if end in self._match_ends:
            self._match_ends.move_to_end(end)
            pending.shared_end = end
            return True
        self._remember(end)
        return False

    def _remember(self, end: int) -> None:
        self._match_ends[end] = None
        if len(self._match_ends) > _MATCH_ENDS_LIMIT:
            self._match_ends.popitem(last=False)

    def prompt_tokens(self, ctx: RequestContext) -> int:
        """The prompt's token count once :meth:`prepare` tokenized it (estimated when it continues a kept
        turn), else 0."""
        found = self._requests.get(ctx.request_id)
        return found.length if found is not None else 0

    def cached_tokens(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, int]:
        """Leading prompt tokens each pod holds in any medium (pods holding nothing are left out)."""
        pending = self._requests.get(ctx.request_id)
        if pending is None:
            return {}
        return {pod: match.tokens for pod, (match, _total) in self._matches(ctx, pending, pods).items()}

    def on_routed(self, ctx: RequestContext, pod: Endpoint) -> None:
        """Runs once the request is written to the engine: a continued turn is tokenized now if it is to be
        (:meth:`~brixmesh.router.kv.tokenizer.TurnPrefix.sent`), while the engine works on it and before the
        conversation's next turn can come."""
        pending = self._requests.pop(ctx.request_id, None)
        if pending is None:
            return
        if pending.shared_end in self._match_ends:
            self._match_ends[pending.shared_end] = pod.name
        turn = pending.turn
        if turn is not None:
            try:
                tokens = turn.sent(pod.name)
            except TokenizerError:
                return
            if tokens is not None:
                pending = _Pending(tokens, len(tokens))
        self._add_speculative(ctx, pending, pod)
        kept = pending.tokens.kept if isinstance(pending.tokens, ChatIds) else None
        if kept is not None:
            kept.served_by = pod.name

    def _prompt_hashes(self, ctx: RequestContext, tokens: Sequence[int], block_size: int) -> list[int]:
        """The prompt's block hashes; a chat prompt's continue those of the kept turn it starts with, and leave
        the blocks kept for its next turn hashed (so a conversation's blocks are hashed once)."""
        model = ctx.base_model or ctx.model
        if not isinstance(tokens, ChatIds):
            return self.index.prompt_hashes(tokens, block_size, model, ctx.adapter, ctx.cache_salt)
        key = (block_size, first_seed(model, ctx.adapter, ctx.cache_salt))
        prefix = tokens.prefix
        known = prefix.hashes.get(key, ()) if prefix is not None and prefix.hashes else ()
        hashes = self.index.prompt_hashes(tokens, block_size, model, ctx.adapter, ctx.cache_salt, known)
        kept = tokens.kept
        if kept is not None:
            kept.hashes = {key: hashes[: len(kept.ids) // block_size]}
        return hashes

    def _add_speculative(self, ctx: RequestContext, pending: _Pending, pod: Endpoint) -> None:
        block_size = self._pod_block_size(pod)
        if self.speculative and block_size > 0:
            hashes = self._hashes(ctx, pending, block_size)
            if hashes:
                self.index.add_speculative(pod.name, hashes)
