"""Live traffic as a histogram over (input length, output length) buckets, over a sliding window.

Fed with every router replica's :class:`RouterStats`; a cell's rate is the sum over routers of the requests
that router completed in the cell divided by the time its stats in the window cover, so a router that joined
late (or a window not yet full) is not diluted by time it did not report.
"""

from __future__ import annotations

from collections import deque

from brixmesh.common.messages import RouterStats

Cell = tuple[int, int]
"""(input bucket, output bucket), see ``brixmesh.common.shapes``."""


class LoadShape:
    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("load-shape window must be > 0")
        self.window_s = window_s
        self._by_router: dict[str, deque[RouterStats]] = {}

    def record(self, stats: RouterStats) -> None:
        self._by_router.setdefault(stats.router, deque()).append(stats)

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        for router, records in list(self._by_router.items()):
            while records and records[0].ts <= cutoff:
                records.popleft()
            if not records:
                del self._by_router[router]

    def covered_s(self, now: float) -> float:
        """Seconds of traffic the window holds (the longest any router covers); 0 = nothing to go on."""
        self._expire(now)
        return max((sum(s.window_s for s in records) for records in self._by_router.values()), default=0.0)

    def rates(self, now: float) -> dict[Cell, float]:
        """Requests per second per cell (cells without traffic are absent)."""
        self._expire(now)
        out: dict[Cell, float] = {}
        for records in self._by_router.values():
            span = sum(s.window_s for s in records)
            if span <= 0:
                continue
            for stats in records:
                for shape in stats.shapes:
                    cell = (shape.input_bucket, shape.output_bucket)
                    out[cell] = out.get(cell, 0.0) + shape.count / span
        return out
