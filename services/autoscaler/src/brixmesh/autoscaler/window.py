"""Time-based sliding windows of evaluation samples (stable and panic windows)."""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """Mean and max of the samples taken in the last ``span_s`` seconds.

    A window younger than its span averages what it has (as Knative does), but reports itself not
    :meth:`filled`: the policy makes no decision from it until it covers its whole span (after a restart the
    windows refill first).
    """

    def __init__(self, span_s: float) -> None:
        if span_s <= 0:
            raise ValueError("window span must be > 0")
        self.span_s = span_s
        self._samples: deque[tuple[float, float]] = deque()
        self._sum = 0.0
        self._since = 0.0
        """When the window last went from empty to holding samples."""

    def add(self, ts: float, value: float) -> None:
        self._expire(ts)
        if not self._samples:
            self._since = ts
        self._samples.append((ts, value))
        self._sum += value

    def filled(self, now: float) -> bool:
        """True once the window has held samples without a gap for its whole span."""
        self._expire(now)
        return bool(self._samples) and now - self._since >= self.span_s - 1e-9

    def _expire(self, now: float) -> None:
        cutoff = now - self.span_s
        while self._samples and self._samples[0][0] <= cutoff:
            self._sum -= self._samples.popleft()[1]

    def mean(self, now: float) -> float | None:
        self._expire(now)
        if not self._samples:
            return None
        return self._sum / len(self._samples)

    def max(self, now: float) -> float | None:
        self._expire(now)
        return max((value for _, value in self._samples), default=None)

    def __len__(self) -> int:
        return len(self._samples)
