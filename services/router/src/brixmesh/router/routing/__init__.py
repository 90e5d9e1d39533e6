"""Routing as a pipeline: filters -> weighted scorers -> picker.

How one request is routed
-------------------------
1. The gateway builds a :class:`RequestContext` (model, adapter, prompt as chat ``messages`` / ``prompt`` text /
   token ids, user, session id, stream flag, headers) and hands it with the candidate :class:`Endpoint` list to
   :meth:`Router.route`.
2. **Filters** (:mod:`.filters`) drop endpoints that cannot serve: wrong model/adapter, not ready or draining,
   unhealthy (recent connection failures), wrong role.
3. **Scorers** of the chosen strategy each return ``{pod_name: score in [0, 1]}`` (missing pods score 0). A
   strategy is one scorer or a weighted composition such as ``prefix-cache:3,least-request:2,least-kv-cache:2``.
4. The **load guard** (:mod:`.picker`) zeroes the affinity scores of pods that already carry clearly more load
   than the least-loaded candidate, and lowers the totals of pods sent clearly more requests than the mean
   lately, so cache affinity never piles work on one pod.
5. The **picker** takes the highest weighted sum, ties broken at random; retries take the next best.
6. Lifecycle hooks: ``on_routed(ctx, pod)`` after the choice, ``on_first_byte(ctx, pod)`` when the pod's
   answer begins, ``on_completed(ctx, pod, usage)`` when the
   response ends (successfully or not; ``usage`` is None when unknown).

Writing a scorer (one small module, registered by name)
--------------------------------------------------------
::

    class MyScorer:
        name = "my-scorer"
        category = "distribution"      # or "affinity" (prefix/session-like: subject to the load guard)

        def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]: ...

        # optional hooks, detected with getattr:
        async def prepare(self, ctx: RequestContext) -> None: ...   # e.g. await ctx.token_ids()
        def on_routed(self, ctx: RequestContext, pod: Endpoint) -> None: ...
        def on_first_byte(self, ctx: RequestContext, pod: Endpoint) -> None: ...  # answer began
        def on_completed(self, ctx: RequestContext, pod: Endpoint, usage: Usage | None) -> None: ...

    registry.register_scorer("my-scorer", lambda env: MyScorer())

``env`` is the :class:`RoutingEnv`: the shared load tracker (in-flight per pod, shared between router replicas),
the approximate prefix index, the random source and ``tokenizer`` (an async callable ``ctx -> list[int] | None``
that extensions such as the KV module may set). :meth:`RequestContext.token_ids` calls it at most once per
request and caches the result.

Scorer instances are built once per registry and shared by every strategy that names them.
"""

from brixmesh.router.routing.context import RequestContext, Usage
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.registry import RoutingEnv, StrategyRegistry, UnknownStrategy, default_registry
from brixmesh.router.routing.router import NoEndpoint, Router, RoutingDecision
from brixmesh.router.routing.scorer import Category, Scorer

__all__ = [
    "Category",
    "Endpoint",
    "NoEndpoint",
    "RequestContext",
    "Router",
    "RoutingDecision",
    "RoutingEnv",
    "Scorer",
    "StrategyRegistry",
    "UnknownStrategy",
    "Usage",
    "default_registry",
]
