"""In-flight accounting per pod, shared between router replicas, with an expiry path; and how many
requests each pod was sent lately.

Each entry is keyed by (router replica, request id); a replica that dies or loses a completion message cannot
leak counts forever because every entry expires after ``ttl_s``.

*Recent* counts are requests routed to a pod, each decaying with a half-life of ``recent_half_life_s``.
In-flight counts tell nothing at low load (every pod idle between requests), but what a pod was sent
lately is also the traffic its conversations will bring next: the load guard balances it
(:class:`.picker.LoadGuard`).
"""

from __future__ import annotations

from collections import defaultdict

_FORGOTTEN = 0.01
"""A recent count below this is dropped (pods that left the fleet must not stay in the table)."""


class LoadTracker:
    def __init__(self, ttl_s: float = 900.0, recent_half_life_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self.recent_half_life_s = recent_half_life_s
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._recent: dict[str, tuple[float, float]] = {}
        """pod -> (decayed count, as of when)"""

    def start(self, router: str, request_id: str, pod: str, now: float) -> None:
        key = (router, request_id)
        if key in self._entries:
            self.finish(router, request_id)
        self._entries[key] = (pod, now + self.ttl_s)
        self._counts[pod] += 1
        self._recent[pod] = (self.recent(pod, now) + 1.0, now)

    def finish(self, router: str, request_id: str) -> None:
        found = self._entries.pop((router, request_id), None)
        if found is not None:
            self._counts[found[0]] -= 1

    def count(self, pod: str) -> int:
        return self._counts.get(pod, 0)

    def counts(self) -> dict[str, int]:
        return {pod: count for pod, count in self._counts.items() if count}

    def recent(self, pod: str, now: float) -> float:
        """Requests routed to ``pod``, each weighing 1/2 per ``recent_half_life_s`` since it was routed."""
        found = self._recent.get(pod)
        if found is None:
            return 0.0
        count, at = found
        return count * 0.5 ** (max(now - at, 0.0) / self.recent_half_life_s)

    def total(self) -> int:
        return len(self._entries)

    def expire(self, now: float) -> int:
        """Drop entries past their deadline; returns how many leaked entries were dropped."""
        stale = [key for key, (_pod, deadline) in self._entries.items() if deadline <= now]
        for router, request_id in stale:
            self.finish(router, request_id)
        for pod in [pod for pod in self._recent if self.recent(pod, now) < _FORGOTTEN]:
            del self._recent[pod]
        return len(stale)

    def forget_router(self, router: str) -> None:
        for key in [key for key in self._entries if key[0] == router]:
            self.finish(*key)
