"""Engine symptoms of the node's pods: health probes that fail, steps slower than the pod's own baseline,
and canary prompts at temperature 0 whose answer changes (silent data corruption).

- Probe: ``GET /health`` every poll; ``probe_failures`` carries the run of consecutive failures.
- Step time: the mean inter-token latency between two scrapes of ``vllm:inter_token_latency_seconds``
  (only intervals with at least ``min_tokens`` tokens count); the baseline is the median of the pod's first
  ``baseline_intervals`` such intervals. ``step_time_regression`` carries latest / baseline, reported at
  every poll until a newer interval is measured (or for ``STEP_STALE_S`` without one), like any state.
- Canary: every ``canary_interval_s`` a fixed prompt, greedy, a few tokens. The reference answer of a
  model is the one most of its pods give (with one pod: that pod's first answer); a pod answering
  otherwise raises ``canary_mismatch``.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from brixmesh.common.messages import GPU_INDEX_LABEL, PodInfo
from prometheus_client.parser import text_string_to_metric_families

from brixmesh.gpu_doctor.signals import Signal

ITL_METRIC = "vllm:inter_token_latency_seconds"
STEP_STALE_S = 10.0
CANARY_PROMPT = "The quick brown fox jumps over the lazy dog. Repeat after me: one, two, three,"


@dataclass
class StepBaseline:
    """One pod's step-time history. Pure."""

    baseline_intervals: int = 5
    min_tokens: int = 20
    samples: list[float] = field(default_factory=list)
    last: tuple[float, float] | None = None
    """(sum, count) of the inter-token-latency histogram at the previous scrape."""

    def observe(self, itl_sum: float, itl_count: float) -> tuple[float, float] | None:
        """(mean inter-token latency of the interval, baseline) once there is a baseline, else None."""
        previous, self.last = self.last, (itl_sum, itl_count)
        if previous is None or itl_count < previous[1]:
            return None  # first scrape, or the engine restarted
        tokens = itl_count - previous[1]
        if tokens < self.min_tokens:
            self.last = previous  # too few tokens to judge: the interval grows until there are enough
            return None
        mean = (itl_sum - previous[0]) / tokens
        if len(self.samples) < self.baseline_intervals:
            self.samples.append(mean)
            return None
        return mean, statistics.median(self.samples)


def itl_totals(metrics_text: str) -> tuple[float, float]:
    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == ITL_METRIC + "_sum":
                total += sample.value
            elif sample.name == ITL_METRIC + "_count":
                count += sample.value
    return total, count


def canary_reference(answers: dict[str, str], first_answers: dict[str, str], pod: str) -> str:
    """The answer ``pod`` should give: the most common among the model's pods when two or more agree,
    else the pod's own first answer."""
    common = Counter(answers.values()).most_common(1)
    if common and common[0][1] >= 2:
        return common[0][0]
    return first_answers[pod]


@dataclass
class PodState:
    info: PodInfo
    probe_failures: int = 0
    steps: StepBaseline = field(default_factory=StepBaseline)
    canary_due: float = 0.0
    step: Signal | None = None
    step_measured_at: float = 0.0
    canary: asyncio.Task[None] | None = None
    """The canary in flight: it runs beside the polls (a slow engine must not slow every poll)."""
    first_answer: str | None = None
    answer: str | None = None


class EngineSource:
    name = "engine"

    def __init__(
        self,
        pods: Callable[[], list[PodInfo]],
        *,
        probe_timeout_s: float = 2.0,
        canary_interval_s: float = 10.0,
        canary_tokens: int = 8,
        baseline_intervals: int = 5,
        min_tokens: int = 20,
    ) -> None:
        self._pods = pods
        self._http = httpx.AsyncClient(timeout=probe_timeout_s)
        self._canary_interval_s = canary_interval_s
        self._canary_tokens = canary_tokens
        self._baseline_intervals = baseline_intervals
        self._min_tokens = min_tokens
        self._state: dict[str, PodState] = {}

    async def poll(self, now: float) -> list[Signal]:
        current = {info.pod: info for info in self._pods()}
        for gone in self._state.keys() - current.keys():
            canary = self._state.pop(gone).canary
            if canary is not None:
                canary.cancel()
        for name, info in current.items():
            if name not in self._state:
                self._state[name] = PodState(
                    info, steps=StepBaseline(self._baseline_intervals, self._min_tokens), canary_due=now
                )
        results = await asyncio.gather(*(self._check(state, now) for state in self._state.values()))
        signals = [signal for found in results for signal in found]
        signals += self._canary_mismatches()
        return signals

    async def _check(self, state: PodState, now: float) -> list[Signal]:
        info = state.info
        gpu = info.labels.get(GPU_INDEX_LABEL, "")
        found = []
        try:
            (await self._http.get(info.endpoint + "/health")).raise_for_status()
            state.probe_failures = 0
        except httpx.HTTPError as exc:
            state.probe_failures += 1
            found.append(Signal("probe_failures", gpu=gpu, pod=info.pod, value=state.probe_failures,
                                source=self.name, detail={"error": f"{type(exc).__name__}: {exc}"[:200]}))
            return found  # a dead engine has no step times or canary answers worth reading
        if info.metrics_url:
            try:
                response = await self._http.get(info.metrics_url)
                response.raise_for_status()
                step = state.steps.observe(*itl_totals(response.text))
            except (httpx.HTTPError, ValueError):
                step = None
            if step is not None and step[1] > 0:
                mean, baseline = step
                detail = {"itl_ms": f"{mean * 1000:.2f}", "baseline_itl_ms": f"{baseline * 1000:.2f}"}
                state.step = Signal("step_time_regression", gpu=gpu, pod=info.pod, value=mean / baseline,
                                    source=self.name, detail=detail)
                state.step_measured_at = now
            if state.step is not None and now - state.step_measured_at <= STEP_STALE_S:
                found.append(state.step)
        if now >= state.canary_due and (state.canary is None or state.canary.done()):
            state.canary_due = now + self._canary_interval_s
            state.canary = asyncio.get_running_loop().create_task(self._ask_canary(state))
        return found

    async def _ask_canary(self, state: PodState) -> None:
        answer = await self._canary(state.info)
        if answer is not None:
            state.answer = answer
            state.first_answer = state.first_answer if state.first_answer is not None else answer

    async def _canary(self, info: PodInfo) -> str | None:
        body = {"model": info.model, "prompt": CANARY_PROMPT, "max_tokens": self._canary_tokens,
                "temperature": 0, "seed": 0}
        try:
            response = await self._http.post(info.endpoint + "/v1/completions", json=body)
            response.raise_for_status()
            return str(response.json()["choices"][0]["text"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return None

    def _canary_mismatches(self) -> list[Signal]:
        by_model: dict[str, dict[str, str]] = {}
        first: dict[str, str] = {}
        for name, state in self._state.items():
            if state.answer is not None and state.first_answer is not None:
                by_model.setdefault(state.info.model, {})[name] = state.answer
                first[name] = state.first_answer
        found = []
        for answers in by_model.values():
            for name, answer in answers.items():
                expected = canary_reference(answers, first, name)
                if answer != expected:
                    info = self._state[name].info
                    detail = {"expected": expected[:80], "got": answer[:80]}
                    found.append(Signal("canary_mismatch", gpu=info.labels.get(GPU_INDEX_LABEL, ""), pod=name,
                                        source=self.name, detail=detail))
        return found

    async def close(self) -> None:
        canaries = [state.canary for state in self._state.values() if state.canary is not None]
        for canary in canaries:
            canary.cancel()
        await asyncio.gather(*canaries, return_exceptions=True)
        await self._http.aclose()
