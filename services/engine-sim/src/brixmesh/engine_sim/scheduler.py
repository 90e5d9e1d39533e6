"""Continuous-batching scheduler mirroring vLLM v1, driven one step at a time; no I/O, no clock.

Per step, with a token budget of ``max_num_batched_tokens``:
1. running requests in FCFS order: a decode takes one token, an unfinished prefill the rest of its prompt
   up to the budget (chunked prefill). When the KV cache cannot hold the new tokens, the newest running
   request is preempted (blocks freed, computed tokens reset, pushed to the front of the queue) until the
   allocation fits or the request itself was preempted;
2. waiting requests, while budget and ``max_num_seqs`` allow and nothing was preempted this step: prefix
   cache lookup, then the first chunk; the first request that does not fit stops admission. Requests
   for an adapter that would exceed ``max_loras`` distinct adapters, or whose remote KV has not arrived,
   are deferred and skipped;
3. ``finish_step`` advances the clock: every request whose prompt is now fully computed samples one token.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from brixmesh.engine_sim.request import SimRequest, Status
from brixmesh.engine_sim.timing import StepShape


class KvCache(Protocol):
    """The slice of ``kv_cache.KvCacheManager`` the scheduler uses."""

    def get_computed_blocks(self, request: SimRequest) -> int: ...

    def allocate_slots(self, request: SimRequest, num_new_tokens: int) -> bool: ...

    def cache_full_blocks(self, request: SimRequest) -> None: ...

    def free(self, request: SimRequest) -> None: ...


@dataclass(slots=True)
class ScheduledStep:
    """One step's plan; ``num_scheduled`` maps each scheduled request to its new token count."""

    num_scheduled: dict[SimRequest, int]
    shape: StepShape
    preempted: list[SimRequest]
    newly_admitted: list[SimRequest]

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled


@dataclass(slots=True)
class StepResult:
    tokens: list[SimRequest] = field(default_factory=list)
    first_tokens: list[SimRequest] = field(default_factory=list)
    finished: list[SimRequest] = field(default_factory=list)
    num_generation_tokens: int = 0


@dataclass(slots=True)
class SchedulerLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    max_loras: int = 0
    long_prefill_token_threshold: int = 0


class Scheduler:
    def __init__(self, limits: SchedulerLimits, kv_cache: KvCache) -> None:
        self.limits = limits
        self.kv = kv_cache
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.num_preemptions = 0
        self.num_deferred = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: SimRequest) -> None:
        self.waiting.append(request)

    def abort(self, request: SimRequest, reason: str = "abort") -> bool:
        """Drops a request (client went away); returns False when it had already finished."""
        if request.is_finished:
            return False
        if request.status is Status.RUNNING:
            self.running.remove(request)
            self.kv.free(request)
        else:
            self.waiting.remove(request)
        request.status = Status.FINISHED
        request.finish_reason = reason
        return True

    def schedule(self, now: float) -> ScheduledStep:
        budget = self.limits.max_num_batched_tokens
        scheduled: dict[SimRequest, int] = {}
        preempted: list[SimRequest] = []
        admitted: list[SimRequest] = []

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            threshold = self.limits.long_prefill_token_threshold
            if threshold and num_new > threshold:
                num_new = threshold
            if num_new <= 0:
                index += 1
                continue
            while not self.kv.allocate_slots(request, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim)
                scheduled.pop(victim, None)
                if victim is request:
                    break
            else:
                scheduled[request] = num_new
                budget -= num_new
                index += 1
                continue
            break

        # Budget returned by preempted requests is not reused this step, as in vLLM.
        budget = self.limits.max_num_batched_tokens - sum(scheduled.values())
        self.num_deferred = 0
        if not preempted:
            self._admit(now, budget, scheduled, admitted)
        else:
            self.num_deferred = sum(1 for r in self.waiting if not self._admissible_later(r, now))
        return ScheduledStep(scheduled, self._shape(scheduled), preempted, admitted)

    def _admit(
        self, now: float, budget: int, scheduled: dict[SimRequest, int], admitted: list[SimRequest]
    ) -> None:
        skipped: list[SimRequest] = []
        active_loras = {r.lora_name for r in self.running if r.lora_name}
        while self.waiting and budget > 0 and len(self.running) < self.limits.max_num_seqs:
            request = self.waiting[0]
            if not self._admissible_later(request, now) or not self._lora_fits(request, active_loras):
                skipped.append(self.waiting.popleft())
                continue
            fresh = request.num_computed_tokens == 0
            if fresh:
                hit = self.kv.get_computed_blocks(request)
                if request.num_cached_tokens < 0:
                    request.num_cached_tokens = hit
                request.num_computed_tokens = hit
            num_new = request.num_tokens - request.num_computed_tokens
            if request.remote_prefill and fresh and request.num_preemptions == 0:
                # Remote KV covers the prompt except the last token, which this engine computes.
                request.num_external_tokens = max(0, num_new - 1)
            elif fresh and request.num_preemptions == 0 and (
                request.tier_from_tokens <= request.num_computed_tokens < request.tier_tokens
            ):
                # Blocks fetched from the KV tier are loaded, not computed, like remote KV; the rest of the
                # prompt is computed in the same step.
                request.num_external_tokens = request.tier_tokens - request.num_computed_tokens
            else:
                num_new = min(num_new, budget)
                threshold = self.limits.long_prefill_token_threshold
                if threshold and num_new > threshold:
                    num_new = threshold
            if not self.kv.allocate_slots(request, num_new):
                if fresh:
                    request.num_computed_tokens = 0
                break
            self.waiting.popleft()
            request.status = Status.RUNNING
            if request.first_scheduled_time is None:
                request.first_scheduled_time = now
            self.running.append(request)
            if request.lora_name:
                active_loras.add(request.lora_name)
            scheduled[request] = num_new
            budget -= num_new - request.num_external_tokens if fresh else num_new
            admitted.append(request)
        self.num_deferred = len(skipped)
        self.waiting.extendleft(reversed(skipped))

    def _admissible_later(self, request: SimRequest, now: float) -> bool:
        return request.ready_time <= now

    def _lora_fits(self, request: SimRequest, active: set[str]) -> bool:
        if not request.lora_name or request.lora_name in active:
            return True
        return len(active) < max(self.limits.max_loras, 1)

    def _preempt(self, request: SimRequest) -> None:
        self.kv.free(request)
        request.status = Status.WAITING
        request.num_computed_tokens = 0
        request.num_external_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _shape(self, scheduled: dict[SimRequest, int]) -> StepShape:
        prefill: list[tuple[int, int]] = []
        decode: list[int] = []
        adapters = {r.lora_name for r in scheduled if r.lora_name}
        for request, n in scheduled.items():
            computed = request.num_computed_tokens
            if request.num_external_tokens and computed + n == request.num_tokens:
                # Transferred KV is read, not computed: cost only the locally computed tail.
                prefill.append((n - request.num_external_tokens, computed + request.num_external_tokens))
            elif n == 1 and computed == request.num_tokens - 1 and request.num_output_tokens > 0:
                decode.append(computed)
            else:
                prefill.append((n, computed))
        return StepShape(prefill, decode, len(adapters))

    def finish_step(self, step: ScheduledStep, now: float) -> StepResult:
        result = StepResult()
        for request, n in step.num_scheduled.items():
            if request.status is not Status.RUNNING:
                continue
            request.num_computed_tokens += n
            self.kv.cache_full_blocks(request)
            if request.num_computed_tokens < request.num_tokens:
                continue  # partial prefill chunk: no token yet
            token = request.tokens.next_token()
            if request.first_token_time is None:
                result.first_tokens.append(request)
            request.append_output(token, now)
            result.num_generation_tokens += 1
            result.tokens.append(request)
            reason = self._stop_reason(request, token)
            if reason is not None:
                request.finish_reason = reason
                request.status = Status.FINISHED
                request.finished_time = now
                result.finished.append(request)
        if result.finished:
            done = {id(r) for r in result.finished}
            self.running = [r for r in self.running if id(r) not in done]
            for request in result.finished:
                if request.kv_lease_key is None:  # else freed when pulled or when the lease ends
                    self.kv.free(request)
        return result

    def _stop_reason(self, request: SimRequest, token: int) -> str | None:
        if request.num_output_tokens >= request.min_tokens:
            if not request.ignore_eos and request.eos_token_id is not None and token == request.eos_token_id:
                request.stop_reason = None
                return "stop"
            if token in request.stop_token_ids:
                request.stop_reason = token
                return "stop"
            if request.stop_text is not None:
                matched = request.stop_text.push(token)
                if matched is not None:
                    request.stop_reason = matched
                    return "stop"
        if request.num_output_tokens >= request.max_tokens:
            return "length"
        if request.num_tokens >= self.limits.max_model_len:
            return "length"
        return None
