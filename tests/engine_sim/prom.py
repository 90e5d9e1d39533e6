"""Minimal Prometheus text parsing for tests: samples by metric name, peaks while a load runs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx


def metric_samples(text: str) -> dict[str, list[tuple[str, float]]]:
    """``{name: [(labels without braces, value), ...]}`` for every sample line."""
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        out.setdefault(name, []).append((labels.rstrip("}"), float(value)))
    return out


def metric_value(text: str, name: str) -> float:
    """Sum over all label sets of one metric (0 when absent)."""
    return sum(v for _, v in metric_samples(text).get(name, []))


def histogram_above(text: str, name: str, bound: str) -> float:
    """How many observations of histogram ``name`` exceeded bucket ``bound`` (``le`` as printed), summed over
    label sets."""
    samples = metric_samples(text)
    total = sum(v for _, v in samples.get(f"{name}_count", []))
    within = sum(v for labels, v in samples.get(f"{name}_bucket", []) if f'le="{bound}"' in labels)
    return total - within


async def peak_load(client: httpx.AsyncClient, tasks: Sequence[asyncio.Task[Any]]) -> tuple[float, float]:
    """The highest waiting-request count and KV cache usage ``/metrics`` showed while ``tasks`` ran."""
    waiting = usage = 0.0
    while not all(t.done() for t in tasks):
        text = (await client.get("/metrics")).text
        waiting = max(waiting, metric_value(text, "vllm:num_requests_waiting"))
        usage = max(usage, metric_value(text, "vllm:kv_cache_usage_perc"))
        await asyncio.sleep(0.05)
    return waiting, usage
