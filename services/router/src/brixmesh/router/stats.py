"""Per-second request statistics per model (``RouterStats`` on ``router.stats.<model>.<router>``): the
autoscaler's leading signal, including demand held while a model has no ready pod (``queued``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from brixmesh.common.messages import RouterStats, ShapeCount
from brixmesh.common.shapes import length_bucket


@dataclass(slots=True)
class _Window:
    arrivals: int = 0
    completions: int = 0
    failures: int = 0
    in_flight: int = 0
    queued: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_active: float = 0.0
    shapes: dict[tuple[int, int], int] = field(default_factory=dict)
    """(input bucket, output bucket) -> completed requests; bounded by the bucket cap of common.shapes."""


class StatsCollector:
    def __init__(self, router_id: str, idle_report_s: float = 60.0) -> None:
        self.router_id = router_id
        self.idle_report_s = idle_report_s
        self._models: dict[str, _Window] = {}
        self._window_start = time.monotonic()

    def _window(self, model: str) -> _Window:
        found = self._models.get(model)
        if found is None:
            found = self._models[model] = _Window()
        found.last_active = time.monotonic()
        return found

    def arrived(self, model: str) -> None:
        window = self._window(model)
        window.arrivals += 1
        window.in_flight += 1

    def queued(self, model: str, delta: int) -> None:
        self._window(model).queued += delta

    def finished(self, model: str, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        window = self._window(model)
        window.in_flight -= 1
        if ok:
            window.completions += 1
        else:
            window.failures += 1
        window.prompt_tokens += prompt_tokens
        window.completion_tokens += completion_tokens
        if ok and prompt_tokens > 0:  # no usage (a stream without include_usage): shape unknown
            cell = (length_bucket(prompt_tokens), length_bucket(completion_tokens))
            window.shapes[cell] = window.shapes.get(cell, 0) + 1

    def snapshot(self) -> list[RouterStats]:
        """Close the current window: one record per model active in the last ``idle_report_s``."""
        now = time.monotonic()
        span = max(now - self._window_start, 1e-6)
        self._window_start = now
        wall = time.time()
        out = []
        for model, w in list(self._models.items()):
            if w.in_flight == 0 and w.queued == 0 and now - w.last_active > self.idle_report_s:
                del self._models[model]
                continue
            out.append(RouterStats(
                router=self.router_id, model=model, ts=wall, window_s=span, arrivals=w.arrivals,
                completions=w.completions, failures=w.failures, in_flight=w.in_flight, queued=w.queued,
                prompt_tokens=w.prompt_tokens, completion_tokens=w.completion_tokens,
                shapes=[ShapeCount(i, o, n) for (i, o), n in w.shapes.items()],
            ))  # fmt: skip
            w.arrivals = w.completions = w.failures = w.prompt_tokens = w.completion_tokens = 0
            w.shapes = {}
        return out
