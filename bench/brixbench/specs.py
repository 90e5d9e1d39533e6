"""Command-line specs of workloads and arrival processes, parsed into jobs and schedules. Pure.

Workloads: ``shared-prefix[:GROUPS:PER_GROUP:SYSTEM:QUESTION:OUTPUT]``, ``llmd[:SCALE]``,
``multi-turn[:SESSIONS:TURN_MEAN:TURN_STD:OUTPUT]``, ``sharegpt[:REQUESTS]``, ``mooncake:PATH[:LIMIT]``.
Arrivals: ``poisson:RATE``, ``gamma:RATE:CV``, ``closed:CONCURRENCY``, ``ladder[:QPS_SCALE:TIME_SCALE]`` (llm-d's),
``sinusoid:PRESET:MEAN_QPS:DURATION_S``, ``trace[:SPEEDUP]`` (the jobs' own timestamps, e.g. Mooncake).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from brixbench import arrivals
from brixbench.text import TextSource
from brixbench.workloads import (
    Job,
    llmd_shared_prefix,
    mooncake_trace,
    multi_turn,
    shared_prefix,
    sharegpt_like,
)


class SpecError(ValueError):
    """A spec string is malformed; ``str()`` is one line naming the spec."""


def _numbers(spec: str, parts: Sequence[str], kinds: Sequence[Callable[[str], float]],
             defaults: Sequence[float]) -> list[float]:
    if len(parts) > len(kinds):
        raise SpecError(f"{spec!r}: too many fields (at most {len(kinds)} after the name)")
    values = list(defaults)
    for i, (text, kind) in enumerate(zip(parts, kinds)):
        try:
            values[i] = kind(text)
        except ValueError:
            raise SpecError(f"{spec!r}: field {i + 1} ({text!r}) is not a number") from None
        if values[i] <= 0:
            raise SpecError(f"{spec!r}: field {i + 1} must be > 0")
    return values


def parse_workload(spec: str, source: TextSource, seed: int = 0) -> list[Job]:
    name, *parts = spec.split(":")
    if name == "shared-prefix":
        g, p, sys_len, q, out = _numbers(spec, parts, [int] * 5, [64, 16, 2048, 128, 256])
        return shared_prefix(source, groups=int(g), prompts_per_group=int(p), system_len=int(sys_len),
                             question_len=int(q), output_len=int(out), seed=seed)
    if name == "llmd":
        (scale,) = _numbers(spec, parts, [float], [1.0])
        return llmd_shared_prefix(source, scale=scale, seed=seed)
    if name == "multi-turn":
        sessions, mean, std, out = _numbers(spec, parts, [int, float, float, int], [1000, 2000, 500, 256])
        return multi_turn(source, sessions=int(sessions), turn_len_mean=mean, turn_len_std=std,
                          output_len=int(out), seed=seed)
    if name == "sharegpt":
        (requests,) = _numbers(spec, parts, [int], [1000])
        return sharegpt_like(source, requests=int(requests), seed=seed)
    if name == "mooncake":
        if not parts or not parts[0]:
            raise SpecError(f"{spec!r}: mooncake needs a path: mooncake:PATH[:LIMIT]")
        path = Path(parts[0])
        (limit,) = _numbers(spec, parts[1:], [int], [10**9])
        try:
            with path.open() as lines:
                return mooncake_trace(lines, source, limit=int(limit))
        except OSError as exc:
            raise SpecError(f"{spec!r}: cannot read {path}: {exc.strerror}") from None
    raise SpecError(f"unknown workload {name!r}; use shared-prefix, llmd, multi-turn, sharegpt or mooncake:PATH")


def parse_arrivals(spec: str, jobs: Sequence[Job], seed: int = 0) -> arrivals.Arrivals:
    name, *parts = spec.split(":")
    n = len(jobs)
    if name == "poisson":
        if not parts:
            raise SpecError(f"{spec!r}: poisson needs a rate: poisson:RATE")
        (rate,) = _numbers(spec, parts, [float], [0])
        return arrivals.poisson(rate, n, seed)
    if name == "gamma":
        if len(parts) != 2:
            raise SpecError(f"{spec!r}: gamma needs a rate and a CV: gamma:RATE:CV")
        rate, cv = _numbers(spec, parts, [float, float], [0, 0])
        return arrivals.gamma(rate, cv, n, seed)
    if name == "closed":
        (concurrency,) = _numbers(spec, parts, [int], [1])
        return arrivals.ClosedLoop(int(concurrency))
    if name == "ladder":
        qps_scale, time_scale = _numbers(spec, parts, [float, float], [1.0, 1.0])
        return arrivals.stage_ladder(arrivals.LLMD_LADDER, n, seed, qps_scale, time_scale)
    if name == "sinusoid":
        if len(parts) != 3:
            raise SpecError(f"{spec!r}: use sinusoid:PRESET:MEAN_QPS:DURATION_S")
        mean, duration = _numbers(spec, parts[1:], [float, float], [0, 0])
        try:
            return arrivals.sinusoid(parts[0], mean, duration, seed)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    if name == "trace":
        (speedup,) = _numbers(spec, parts, [float], [1.0])
        if any(job.at_s is None for job in jobs):
            raise SpecError("trace arrivals need a workload with timestamps (mooncake:PATH)")
        return arrivals.trace([job.at_s or 0.0 for job in jobs], speedup)
    raise SpecError(f"unknown arrival process {name!r}; use poisson, gamma, closed, ladder, sinusoid or trace")
