"""Shared score shaping."""

from __future__ import annotations


def lower_is_better(values: dict[str, float]) -> dict[str, float]:
    """Min-max map to [0, 1]: the lowest value scores 1, the highest 0; all equal -> all 1."""
    if not values:
        return {}
    low, high = min(values.values()), max(values.values())
    if high <= low:
        return dict.fromkeys(values, 1.0)
    span = high - low
    return {name: (high - value) / span for name, value in values.items()}
