"""Minimal Prometheus text parsing for tests: samples by metric name."""

from __future__ import annotations


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
