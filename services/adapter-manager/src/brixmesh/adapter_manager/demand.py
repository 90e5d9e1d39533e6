"""Requests per second per adapter, from the routers' ``router.stats.{model}.{router}`` (pure logic)."""

from __future__ import annotations

from collections import deque


class DemandTracker:
    def __init__(self, window_s: float, started_at: float) -> None:
        self.window_s = window_s
        self.started_at = started_at
        self._arrivals: dict[str, deque[tuple[float, int]]] = {}
        self._held: dict[tuple[str, str], tuple[float, int]] = {}
        """(adapter, router) -> (when, requests the router holds for it now)"""

    def observe(self, adapter: str, router: str, now: float, arrivals: int, queued: int) -> None:
        if arrivals:
            self._arrivals.setdefault(adapter, deque()).append((now, arrivals))
        self._held[(adapter, router)] = (now, queued)

    def forget(self, adapter: str) -> None:
        self._arrivals.pop(adapter, None)
        for key in [key for key in self._held if key[0] == adapter]:
            del self._held[key]

    def known(self, now: float) -> bool:
        """Whether a whole window has been seen (before that, absence of requests means nothing)."""
        return now - self.started_at >= self.window_s

    def rate(self, adapter: str, now: float) -> float:
        window = self._arrivals.get(adapter)
        if window is None:
            return 0.0
        while window and window[0][0] < now - self.window_s:
            window.popleft()
        return sum(count for _ts, count in window) / self.window_s

    def waiting(self, adapter: str, now: float) -> bool:
        """Some router holds requests for it (reported within the last few seconds)."""
        return any(
            queued > 0 and now - ts < 5.0
            for (name, _router), (ts, queued) in self._held.items()
            if name == adapter
        )
