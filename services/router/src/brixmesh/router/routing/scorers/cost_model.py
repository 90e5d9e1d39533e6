"""``cost-model``: send each request where its predicted time to first token is smallest.

For every candidate pod the prediction is

    TTFT = base + per_token x (queued prefill tokens + this prompt's tokens the pod has not cached)
                + per_decode x running decodes
                + full-cache penalty

- *uncached tokens*: the prompt's length less the longest prefix the pod holds, from the KV index (the same
  lookup as ``kv-aware``; a prompt that cannot be tokenized counts as uncached everywhere);
- *queued prefill*: the uncached tokens of requests this router sent there that have not yet answered their
  first byte; *running decodes*: the pod's other requests in flight (counted by every router replica);
- *speeds* (``base``, ``per_token``, ``per_decode``): learned online from the first-byte times this router
  observes on streamed answers (recursive least squares with forgetting, :class:`SpeedModel`), one fit per
  model's fleet, times a per-pod slowness factor (observed / predicted, smoothed, within
  ``[1 / FACTOR_LIMIT, FACTOR_LIMIT]``) that fades back to 1 when the pod is not observed: a pod that was
  slow once is tried again instead of being starved on an old estimate;
- *full-cache penalty*: on a pod whose KV cache is nearly full (engine ``kv_usage``), placing this prompt's
  new blocks evicts someone else's, who must recompute them later: half the new blocks' prefill time, scaled
  by how full the cache is, and at most ``PENALTY_CAP_S``.

A pod's prediction is lowered by the fit's typical error (its RMS residual) times the share of the prompt the
pod holds: a request leaves the pod holding its prefix only for a predicted gain the model can tell from its
own noise, so conversations do not hop between pods (and evict each other) on load differences of a few
milliseconds.

The scores are ``smallest prediction / prediction`` (the best pod scores 1), so the scorer composes with
others, but alone it needs no load guard: load is in the prediction (category ``distribution``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category
from brixmesh.router.routing.scorers.kv_aware import KvAware

TOKEN_UNIT = 1000.0
"""Prompt tokens enter the fit in thousands, so the three features are of similar size."""
PRIOR = (0.02, 0.1, 0.002)
"""(base s, s per 1000 prefill tokens, s per running decode) for the first pod: about an 8B model on one
H100 at 10k prefill tokens/s; the fit replaces it within a few requests."""
FLOORS = (0.0, 1e-4, 0.0)
"""Predictions use weights clipped to these: a per-token cost of zero would make cache affinity worthless."""
PENALTY_FULL_FROM = 0.8
"""KV usage above which the full-cache penalty starts (it grows linearly to 1 at usage 1)."""
EVICTION_SHARE = 0.5
"""Share of the new blocks' prefill time charged for the prefixes they evict."""
PENALTY_CAP_S = 0.5
FACTOR_LIMIT = 2.0
FACTOR_SMOOTHING = 0.2
"""Weight of one observation in a pod's slowness factor."""
FACTOR_HALF_LIFE_S = 10.0
"""A pod's factor halves its distance to 1 per this many seconds without an observation."""
_PENDING_LIMIT = 4096
_P_START = 100.0
"""Initial covariance: large, so the first observations outweigh the prior."""
_P_TRACE_LIMIT = 1000.0


@dataclass(slots=True)
class SpeedModel:
    """Online least squares of ``ttft ~ w . (1, tokens/1000, running)`` with exponential forgetting. Pure."""

    weights: list[float] = field(default_factory=lambda: list(PRIOR))
    forgetting: float = 0.97
    observations: int = 0
    mean_square_error: float = PRIOR[0] ** 2
    """Smoothed squared error of the predictions before each observation (same forgetting)."""
    _p: list[list[float]] = field(default_factory=lambda: [[_P_START if i == j else 0.0 for j in range(3)]
                                                           for i in range(3)])

    @staticmethod
    def features(tokens: float, running: float) -> tuple[float, float, float]:
        return (1.0, tokens / TOKEN_UNIT, running)

    def predict(self, tokens: float, running: float) -> float:
        x = self.features(tokens, running)
        return sum(max(w, floor) * xi for w, floor, xi in zip(self.weights, FLOORS, x, strict=True))

    def observe(self, tokens: float, running: float, ttft_s: float) -> None:
        x = self.features(tokens, running)
        p = self._p
        px = [sum(p[i][j] * x[j] for j in range(3)) for i in range(3)]
        denominator = self.forgetting + sum(x[i] * px[i] for i in range(3))
        gain = [v / denominator for v in px]
        error = ttft_s - sum(w * xi for w, xi in zip(self.weights, x, strict=True))
        self.mean_square_error += (1 - self.forgetting) * (error * error - self.mean_square_error)
        self.weights = [w + g * error for w, g in zip(self.weights, gain, strict=True)]
        self._p = [[(p[i][j] - gain[i] * px[j]) / self.forgetting for j in range(3)] for i in range(3)]
        trace = self._p[0][0] + self._p[1][1] + self._p[2][2]
        if trace > _P_TRACE_LIMIT:  # forgetting inflates directions the data never excites (wind-up)
            self._p = [[v * _P_TRACE_LIMIT / trace for v in row] for row in self._p]
        self.observations += 1

    @property
    def typical_error(self) -> float:
        return math.sqrt(self.mean_square_error)


@dataclass(slots=True)
class Slowness:
    """How much slower than the fleet fit one pod answers, fading back to 1 while unobserved. Pure."""

    factor: float = 1.0
    observed_at: float = 0.0

    def now(self, at: float) -> float:
        fade = 0.5 ** (max(0.0, at - self.observed_at) / FACTOR_HALF_LIFE_S)
        return 1.0 + (self.factor - 1.0) * fade

    def observe(self, ratio: float, at: float) -> None:
        current = self.now(at)
        ratio = min(FACTOR_LIMIT, max(1.0 / FACTOR_LIMIT, ratio))
        self.factor = current + FACTOR_SMOOTHING * (ratio - current)
        self.observed_at = at


def full_cache_penalty(per_token_s: float, new_tokens: float, kv_usage: float) -> float:
    """What placing ``new_tokens`` on a pod whose KV usage is ``kv_usage`` costs others later, bounded."""
    fullness = min(1.0, max(0.0, (kv_usage - PENALTY_FULL_FROM) / (1.0 - PENALTY_FULL_FROM)))
    return min(PENALTY_CAP_S, fullness * EVICTION_SHARE * per_token_s * new_tokens)


@dataclass(slots=True)
class _Sent:
    pod: str
    tokens: float
    """Queued prefill ahead of it plus its own uncached tokens, when it was sent (the fit's input)."""
    running: float
    uncached: float
    sent_at: float


@dataclass(slots=True)
class PodQueues:
    """Requests this router sent and has not seen the first byte of, per pod. Pure."""

    pending: dict[str, _Sent] = field(default_factory=dict)
    queued_tokens: dict[str, float] = field(default_factory=dict)
    queued_requests: dict[str, int] = field(default_factory=dict)

    def add(self, request_id: str, sent: _Sent) -> None:
        self.drop(request_id)
        self.pending[request_id] = sent
        self.queued_tokens[sent.pod] = self.queued_tokens.get(sent.pod, 0.0) + sent.uncached
        self.queued_requests[sent.pod] = self.queued_requests.get(sent.pod, 0) + 1
        if len(self.pending) > _PENDING_LIMIT:  # a lost completion must not grow the table
            self.drop(next(iter(self.pending)))

    def drop(self, request_id: str) -> _Sent | None:
        sent = self.pending.pop(request_id, None)
        if sent is not None:
            self.queued_tokens[sent.pod] = max(0.0, self.queued_tokens[sent.pod] - sent.uncached)
            self.queued_requests[sent.pod] -= 1
        return sent


class CostModel:
    name = "cost-model"
    category: Category = "distribution"

    def __init__(self, kv: KvAware, clock: Callable[[], float] = time.monotonic) -> None:
        self.kv = kv
        self.clock = clock
        self.speeds: dict[str, SpeedModel] = {}
        """Per model: the fleet's fit."""
        self.slowness: dict[str, Slowness] = {}
        self.queues = PodQueues()
        self._uncached: dict[str, dict[str, float]] = {}
        """request id -> pod -> uncached tokens, from ``score`` to ``on_routed``."""
        self._held_share: dict[str, dict[str, float]] = {}
        """request id -> pod -> share of the prompt it holds, for ``score``."""

    async def prepare(self, ctx: RequestContext) -> None:
        await self.kv.prepare(ctx)

    def speed(self, model: str) -> SpeedModel:
        found = self.speeds.get(model)
        if found is None:
            found = self.speeds[model] = SpeedModel()
        return found

    def _slowness(self, pod: str) -> Slowness:
        found = self.slowness.get(pod)
        if found is None:
            found = self.slowness[pod] = Slowness(observed_at=self.clock())
        return found

    def predictions(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        prompt = self.kv.prompt_tokens(ctx) or ctx.estimated_prompt_tokens()
        cached = self.kv.cached_tokens(ctx, pods)
        uncached = {pod.name: float(max(0, prompt - cached.get(pod.name, 0))) for pod in pods}
        self._held_share[ctx.request_id] = {name: min(1.0, held / prompt) for name, held in cached.items()}
        self._uncached[ctx.request_id] = uncached
        if len(self._uncached) > _PENDING_LIMIT:
            self._uncached.pop(next(iter(self._uncached)))
        if len(self._held_share) > _PENDING_LIMIT:
            self._held_share.pop(next(iter(self._held_share)))
        out = {}
        model = self.speed(ctx.base_model or ctx.model)
        now = self.clock()
        for pod in pods:
            queued = self.queues.queued_tokens.get(pod.name, 0.0)
            running = max(0, pod.in_flight - self.queues.queued_requests.get(pod.name, 0))
            slowness = self._slowness(pod.name).now(now)
            predicted = model.predict(queued + uncached[pod.name], running) * slowness
            metrics = pod.metrics
            if metrics is not None and not metrics.stale:
                per_token = max(model.weights[1], FLOORS[1]) / TOKEN_UNIT
                predicted += full_cache_penalty(per_token, uncached[pod.name], metrics.kv_usage)
            out[pod.name] = predicted
        return out

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        predicted = self.predictions(ctx, pods)
        if not predicted:
            return {}
        held = self._held_share.pop(ctx.request_id, {})
        margin = self.speed(ctx.base_model or ctx.model).typical_error
        predicted = {name: max(1e-6, value - margin * held.get(name, 0.0))
                     for name, value in predicted.items()}
        best = min(predicted.values())
        return {name: best / value if value > 0 else 1.0 for name, value in predicted.items()}

    def on_routed(self, ctx: RequestContext, pod: Endpoint) -> None:
        self.kv.on_routed(ctx, pod)
        uncached = self._uncached.pop(ctx.request_id, {}).get(pod.name)
        if uncached is None:
            return
        queued = self.queues.queued_tokens.get(pod.name, 0.0)
        running = max(0, pod.in_flight - self.queues.queued_requests.get(pod.name, 0))
        # a whole (unstreamed) answer's time is not a first-token time: keep it out of the fit
        sent_at = self.clock() if ctx.stream else -1.0
        self.queues.add(ctx.request_id, _Sent(pod.name, queued + uncached, running, uncached, sent_at))

    def on_first_byte(self, ctx: RequestContext, pod: Endpoint) -> None:
        sent = self.queues.drop(ctx.request_id)
        if sent is None or sent.sent_at < 0 or sent.pod != pod.name:
            return
        now = self.clock()
        ttft = now - sent.sent_at
        model = self.speed(ctx.base_model or ctx.model)
        predicted = model.predict(sent.tokens, sent.running)
        if predicted > 0:
            self._slowness(pod.name).observe(ttft / predicted, now)
        model.observe(sent.tokens, sent.running, ttft)

    def on_completed(self, ctx: RequestContext, pod: Endpoint, usage: object) -> None:
        self.queues.drop(ctx.request_id)
        self._uncached.pop(ctx.request_id, None)
        self._held_share.pop(ctx.request_id, None)
