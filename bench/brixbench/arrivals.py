"""Arrival processes: when each job starts, in modelled seconds from the start of the run. Pure and seeded.

Open-loop processes return one offset per job (:class:`OpenLoop`); :class:`ClosedLoop` keeps a fixed number of
jobs in flight instead. The client multiplies offsets by the fleet's ``--time-scale``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OpenLoop:
    offsets: tuple[float, ...]
    """Start times, one per job (the i-th job starts at ``offsets[i]``), in modelled seconds."""
    label: str = "open"


@dataclass(frozen=True, slots=True)
class ClosedLoop:
    concurrency: int
    label: str = "closed"

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("closed loop needs concurrency >= 1")


Arrivals = OpenLoop | ClosedLoop


def _check_rate(rate: float) -> None:
    if not rate > 0:
        raise ValueError(f"arrival rate must be > 0, got {rate}")


def poisson(rate: float, n: int, seed: int = 0) -> OpenLoop:
    _check_rate(rate)
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return OpenLoop(tuple(out), f"poisson {rate:g}/s")


def gamma(rate: float, cv: float, n: int, seed: int = 0) -> OpenLoop:
    """Gamma inter-arrivals with mean 1/rate and coefficient of variation ``cv`` (cv 1 = Poisson; > 1 bursty)."""
    _check_rate(rate)
    if not cv > 0:
        raise ValueError(f"gamma arrivals need cv > 0, got {cv}")
    rng = random.Random(seed)
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.gammavariate(shape, scale)
        out.append(t)
    return OpenLoop(tuple(out), f"gamma {rate:g}/s cv {cv:g}")


def _thinning(rate_at: Callable[[float], float], peak: float, duration: float, n: int | None,
              rng: random.Random) -> list[float]:
    """Non-homogeneous Poisson by thinning: candidates at the peak rate, kept with probability rate(t)/peak."""
    t, out = 0.0, []
    while n is None or len(out) < n:
        t += rng.expovariate(peak)
        if t > duration:
            break
        if rng.random() * peak < max(0.0, rate_at(t)):
            out.append(t)
    return out


@dataclass(frozen=True, slots=True)
class Stage:
    qps: float
    duration_s: float


# llm-d's benchmark ladder: warm-up 15 QPS x 50 s, then 3 -> 60 QPS in 20-38 s steps.
LLMD_LADDER: tuple[Stage, ...] = (
    Stage(15, 50), Stage(3, 20), Stage(10, 22), Stage(15, 25), Stage(20, 30), Stage(22, 32), Stage(25, 35),
    Stage(30, 38), Stage(35, 38), Stage(40, 38), Stage(43, 38), Stage(46, 38), Stage(49, 38), Stage(52, 38),
    Stage(55, 38), Stage(57, 38), Stage(60, 38),
)


def stage_ladder(stages: Sequence[Stage], n: int | None = None, seed: int = 0, qps_scale: float = 1.0,
                 time_scale: float = 1.0) -> OpenLoop:
    """Poisson arrivals at each stage's rate in turn; stops after the last stage or ``n`` jobs.

    ``qps_scale`` multiplies every rate and ``time_scale`` every duration (to shrink the ladder for a small
    fleet or a quick run).
    """
    if not stages:
        raise ValueError("stage ladder needs at least one stage")
    rng = random.Random(seed)
    out: list[float] = []
    start = 0.0
    for stage in stages:
        rate = stage.qps * qps_scale
        _check_rate(rate)
        duration = stage.duration_s * time_scale
        t = start
        while n is None or len(out) < n:
            t += rng.expovariate(rate)
            if t > start + duration:
                break
            out.append(t)
        start += duration
    return OpenLoop(tuple(out), f"ladder {stages[0].qps * qps_scale:g}..{stages[-1].qps * qps_scale:g}/s")


@dataclass(frozen=True, slots=True)
class SinusoidPreset:
    amplitude: float
    """A as a fraction of the mean B."""
    periods: float
    """Number of periods over the run (the T/period divisor)."""
    rise_only: bool


# AIBrix's presets: x(t) = A sin(2 pi t / (T / period)) + B + N(0, 0.1).
SINUSOID_PRESETS: dict[str, SinusoidPreset] = {
    "quick_rising": SinusoidPreset(0.5, 5, True),
    "slow_rising": SinusoidPreset(0.5, 0.25, True),
    "slight_fluctuation": SinusoidPreset(0.1, 1, False),
    "severe_fluctuation": SinusoidPreset(0.5, 12, False),
}


def sinusoid_value(preset: SinusoidPreset, mean: float, t: float, total_s: float, noise: float = 0.0) -> float:
    """The preset's curve at ``t``; ``noise`` is the N(0, 0.1) draw, applied relative to the mean.

    Rise-only presets keep the rising first quarter of the sine (B up to B + A) and start it again after each
    quarter cycle: ``slow_rising`` (a quarter period over the run) is one slow climb, ``quick_rising`` climbs
    twenty times.
    """
    amp = preset.amplitude * mean
    phase = t / (total_s / preset.periods)
    wave = math.sin(2 * math.pi * (phase % 0.25 if preset.rise_only else phase % 1.0))
    return max(0.0, amp * wave + mean + noise * mean)


def sinusoid(preset_name: str, mean_qps: float, duration_s: float, seed: int = 0) -> OpenLoop:
    preset = SINUSOID_PRESETS.get(preset_name)
    if preset is None:
        raise ValueError(f"unknown sinusoid preset {preset_name!r}; known: {', '.join(SINUSOID_PRESETS)}")
    _check_rate(mean_qps)
    rng = random.Random(seed)
    noise_rng = random.Random(seed + 1)
    # noise is drawn per second of the run so the curve is a function of t, not of how often it is sampled
    noise = [noise_rng.gauss(0, 0.1) for _ in range(int(duration_s) + 2)]
    peak = mean_qps * (1 + preset.amplitude) * 1.5

    def rate_at(t: float) -> float:
        return sinusoid_value(preset, mean_qps, t, duration_s, noise[int(t)])

    return OpenLoop(tuple(_thinning(rate_at, peak, duration_s, None, rng)), f"sinusoid {preset_name}")


def trace(offsets_s: Sequence[float], speedup: float = 1.0) -> OpenLoop:
    """Replay recorded arrival times (rebased to start at 0, order kept), ``speedup`` times faster."""
    if not speedup > 0:
        raise ValueError("trace speedup must be > 0")
    if not offsets_s:
        return OpenLoop((), "trace")
    first = min(offsets_s)
    return OpenLoop(tuple((t - first) / speedup for t in offsets_s), f"trace x{speedup:g}")
