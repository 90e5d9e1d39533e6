"""The three scaling algorithms as pure functions of the observed load, expressed in replicas.

Every metric source is first turned into *raw desired replicas* ``total / target`` (a float: 3.4 means
"three and a bit pods' worth of load"). The algorithms differ in which window of that signal they read
and when they act on it:

- ``hpa``: Kubernetes HPA: the latest value; act when outside the tolerance band around the current
  count; scale down only to the highest recommendation of the stable window (HPA's stabilization).
- ``kpa``: Knative/AIBrix KPA: the stable-window mean normally; the panic-window mean while panicking.
  Panic starts when the panic desire is ``panic_threshold`` times the current count and ends one stable
  window after the last time it was; in panic the count never goes down.
- ``apa``: AIBrix APA: the panic-window mean with an asymmetric tolerance band (up/down tolerances).

Rate caps, min/max bounds and cooldowns are applied afterwards by :func:`bound`, the same for all three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["hpa", "kpa", "apa"]


@dataclass(frozen=True, slots=True)
class Tolerance:
    up: float
    down: float


def _ceil(value: float) -> int:
    # 3.0000000001 from float noise must not ask for a fourth pod
    return math.ceil(round(value, 6))


def within_tolerance(current: int, raw: float, tolerance: Tolerance) -> bool:
    """True when ``raw`` desired replicas are close enough to ``current`` that nothing should change."""
    if current == 0:
        return raw <= 0
    ratio = raw / current
    return 1 - tolerance.down <= ratio <= 1 + tolerance.up


def hpa(current: int, latest: float, stable_max: float, tolerance: Tolerance) -> int:
    if within_tolerance(current, latest, tolerance):
        return current
    desired = _ceil(latest)
    if desired < current:
        # scale-down stabilization: never below what the stable window recently asked for
        desired = min(current, max(desired, _ceil(stable_max)))
    return desired


@dataclass(slots=True)
class KpaState:
    panic_since: float | None = None
    last_over_threshold: float = 0.0

    @property
    def panicking(self) -> bool:
        return self.panic_since is not None


def kpa(
    current: int,
    stable_mean: float,
    panic_mean: float,
    now: float,
    state: KpaState,
    *,
    panic_threshold: float,
    stable_window_s: float,
    tolerance: Tolerance,
) -> int:
    """Mutates ``state`` (panic mode) and returns the desired count."""
    panic_desired = _ceil(panic_mean)
    over_threshold = panic_desired > 0 and panic_desired / max(current, 1) >= panic_threshold
    if over_threshold:
        if state.panic_since is None:
            state.panic_since = now
        state.last_over_threshold = now  # every new burst extends the panic
    elif state.panic_since is not None and now - state.last_over_threshold >= stable_window_s:
        state.panic_since = None
    if state.panicking:
        return max(current, panic_desired)
    if within_tolerance(current, stable_mean, tolerance):
        return current
    return _ceil(stable_mean)


def apa(current: int, window_mean: float, tolerance: Tolerance) -> int:
    if within_tolerance(current, window_mean, tolerance):
        return current
    return _ceil(window_mean)


@dataclass(frozen=True, slots=True)
class Bounds:
    min_replicas: int
    max_replicas: int
    max_scale_up_rate: float
    max_scale_down_rate: float


def bound(current: int, desired: int, bounds: Bounds) -> int:
    """Rate caps relative to the current count (AIBrix: ceil(cur·up), floor(cur/down)), then min/max."""
    if desired > current:
        desired = min(desired, max(1, math.ceil(current * bounds.max_scale_up_rate)))
    elif desired < current:
        desired = max(desired, math.floor(current / bounds.max_scale_down_rate))
    return max(bounds.min_replicas, min(bounds.max_replicas, desired))
