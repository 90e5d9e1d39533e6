"""In-flight accounting per pod, shared between router replicas, with an expiry path.

Each entry is keyed by (router replica, request id); a replica that dies or loses a completion message cannot
leak counts forever because every entry expires after ``ttl_s``.
"""

from __future__ import annotations

from collections import defaultdict


class LoadTracker:
    def __init__(self, ttl_s: float = 900.0) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}
        self._counts: defaultdict[str, int] = defaultdict(int)

    def start(self, router: str, request_id: str, pod: str, now: float) -> None:
        key = (router, request_id)
        if key in self._entries:
            self.finish(router, request_id)
        self._entries[key] = (pod, now + self.ttl_s)
        self._counts[pod] += 1

    def finish(self, router: str, request_id: str) -> None:
        found = self._entries.pop((router, request_id), None)
        if found is not None:
            self._counts[found[0]] -= 1

    def count(self, pod: str) -> int:
        return self._counts.get(pod, 0)

    def counts(self) -> dict[str, int]:
        return {pod: count for pod, count in self._counts.items() if count}

    def total(self) -> int:
        return len(self._entries)

    def expire(self, now: float) -> int:
        """Drop entries past their deadline; returns how many leaked entries were dropped."""
        stale = [key for key, (_pod, deadline) in self._entries.items() if deadline <= now]
        for router, request_id in stale:
            self.finish(router, request_id)
        return len(stale)

    def forget_router(self, router: str) -> None:
        for key in [key for key in self._entries if key[0] == router]:
            self.finish(*key)
