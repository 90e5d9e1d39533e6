"""Waiting for a draining pod's in-flight requests to finish, read from the engine's own ``/metrics``.

In flight = running + waiting (vLLM ``vllm:num_requests_running`` + ``vllm:num_requests_waiting``, SGLang
``sglang:num_running_reqs`` + ``sglang:num_queue_reqs``). Idle means zero for ``settle_s`` in a row, so a
request a router dispatched just before it saw ``draining`` still lands and is waited for.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

IN_FLIGHT_SERIES = frozenset(
    {"vllm:num_requests_running", "vllm:num_requests_waiting", "sglang:num_running_reqs", "sglang:num_queue_reqs"}
)
UNREACHABLE_POLLS = 3
"""Consecutive failed scrapes after which the engine is taken as gone (nothing left to wait for)."""


def in_flight_requests(metrics_text: str) -> float | None:
    """Running + waiting requests summed over all engines in the exposition; None if it has neither."""
    total: float | None = None
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in IN_FLIGHT_SERIES:
                total = (total or 0.0) + sample.value
    return total


@dataclass(frozen=True)
class DrainOutcome:
    idle: bool
    waited_s: float
    in_flight: float | None
    """Last reading (None: the engine never reported one)."""
    unreachable: bool = False

    def describe(self) -> str:
        if self.idle:
            return f"drained: idle after {self.waited_s:.1f}s"
        if self.unreachable:
            return f"drained: engine stopped answering after {self.waited_s:.1f}s"
        pending = "unknown" if self.in_flight is None else f"{self.in_flight:g}"
        return f"drain grace of {self.waited_s:.0f}s elapsed with {pending} request(s) in flight"


async def wait_until_idle(
    client: httpx.AsyncClient,
    metrics_url: str,
    *,
    grace_s: float,
    poll_interval_s: float = 0.25,
    settle_s: float = 0.5,
) -> DrainOutcome:
    started = time.monotonic()
    idle_since: float | None = None
    failures = 0
    last: float | None = None
    while True:
        now = time.monotonic()
        try:
            response = await client.get(metrics_url, timeout=max(0.5, min(2.0, grace_s)))
            response.raise_for_status()
            reading = in_flight_requests(response.text)
            failures = 0
        except (httpx.HTTPError, ValueError):
            reading = None
            failures += 1
            if failures >= UNREACHABLE_POLLS:
                return DrainOutcome(False, time.monotonic() - started, last, unreachable=True)
        if reading is not None:
            last = reading
            if reading > 0:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= settle_s:
                return DrainOutcome(True, time.monotonic() - started, 0.0)
        if time.monotonic() - started >= grace_s:
            return DrainOutcome(False, time.monotonic() - started, last)
        await asyncio.sleep(poll_interval_s)
