"""The async engine: drives the scheduler step by step on a simulated clock and wakes waiting requests.

Simulated time is wall time divided by ``time_scale``. Steps follow each other on a virtual timeline: each
ends its modelled (scaled) duration after the previous one ended. Small host delays (timer overshoot) are
absorbed by ending the next step on time; larger ones (a busy CPU) push the timeline back and are counted
in ``lag_seconds``, which tells whether a host keeps up with its simulated engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from brixmesh.engine_sim.faults import Faults
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_transfer import KvTransfer
from brixmesh.engine_sim.metrics import EngineMetrics
from brixmesh.engine_sim.request import SimRequest
from brixmesh.engine_sim.scheduler import ScheduledStep, Scheduler
from brixmesh.engine_sim.timing import StepTimeModel

log = logging.getLogger(__name__)

# Polling period (simulated seconds) while only deferred requests wait (remote KV in flight).
_DEFERRED_POLL = 0.001
# Timer wake-ups overshoot by up to ~1 ms (libuv timers have millisecond resolution): a step may start up to
# this much (wall) behind schedule and still end on time, so overshoot does not accumulate into drift.
_CATCH_UP_WALL_S = 0.002


class EventSink(Protocol):
    def publish(self, events: list) -> None: ...


class RequestHooks(Protocol):
    """What a KV connector (``kv_tier.SimKvTier``) sees of requests."""

    def submitted(self, request: SimRequest) -> None: ...

    def finished(self, request: SimRequest) -> None: ...


class Engine:
    def __init__(
        self,
        scheduler: Scheduler,
        kv: KvCacheManager,
        step_model: StepTimeModel,
        metrics: EngineMetrics,
        faults: Faults,
        events: EventSink | None = None,
        time_scale: float = 1.0,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.scheduler = scheduler
        self.kv = kv
        self.step_model = step_model
        self.metrics = metrics
        self.faults = faults
        self.events = events
        self.time_scale = time_scale
        self._t0 = time.monotonic()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._prefix_seen = (0, 0)
        self.num_steps = 0
        self.busy_seconds = 0.0
        self.lag_seconds = 0.0
        self.sleep_level = 0
        self.connector: RequestHooks | None = None
        self.kv_transfer: KvTransfer | None = None

    def now(self) -> float:
        """Simulated seconds since the engine started."""
        return (time.monotonic() - self._t0) / self.time_scale

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, request: SimRequest) -> None:
        request.arrival_time = self.now()
        if self.connector is not None:
            self.connector.submitted(request)
        self.scheduler.add(request)
        self._wake.set()

    def abort(self, request: SimRequest) -> None:
        if self.scheduler.abort(request):
            request.finished_time = self.now()
            self.metrics.on_finished(request)
            self._flush_events()

    def release(self, request: SimRequest) -> None:
        """Free a finished request's held blocks (P/D prefill: pulled, or its lease ended)."""
        self.kv.free(request)
        self._flush_events()

    def reset_prefix_cache(self) -> bool:
        ok = self.kv.reset()
        if ok:
            self._wake.set()  # AllBlocksCleared goes out with the next step, as in vLLM
        return ok

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        virtual_wall = loop.time()
        while True:
            if not self.scheduler.has_work:
                self._flush_events()
                self._wake.clear()
                await self._wake.wait()
                virtual_wall = loop.time()
                continue
            while self.faults.hang:
                await asyncio.sleep(0.05)
                virtual_wall = loop.time()
            now = self.now()
            step = self.scheduler.schedule(now)
            self._record_prefix_cache()
            if step.is_empty:
                self._flush_events()
                await asyncio.sleep(_DEFERRED_POLL * self.time_scale)
                virtual_wall = loop.time()
                continue
            duration = self.step_model.step_seconds(step.shape) * self.faults.slowdown
            behind = loop.time() - virtual_wall
            if behind > _CATCH_UP_WALL_S:
                self.lag_seconds += (behind - _CATCH_UP_WALL_S) / self.time_scale
                virtual_wall += behind - _CATCH_UP_WALL_S
            virtual_wall += duration * self.time_scale
            self.busy_seconds += duration
            delay = virtual_wall - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let HTTP handlers run even when behind
            self._finish(step)

    def _finish(self, step: ScheduledStep) -> None:
        now = self.now()
        result = self.scheduler.finish_step(step, now)
        self.num_steps += 1
        self.metrics.on_step(step.total_tokens, len(step.preempted), result.num_generation_tokens)
        transfer = self.kv_transfer
        for request in result.first_tokens:
            self.metrics.on_first_token(request)
            if transfer is not None:
                transfer.record_stored_prompt(request)
        for request in result.finished:
            self.metrics.on_finished(request)
            if self.connector is not None:
                self.connector.finished(request)
            if request.kv_lease_key is not None and transfer is not None:
                transfer.hold(request)
        self._flush_events()
        for request in result.tokens:
            if request.on_update is not None:
                request.on_update(request)

    def _record_prefix_cache(self) -> None:
        counters = self.kv.counters
        queries, hits = counters.queries, counters.hits
        seen_q, seen_h = self._prefix_seen
        if queries != seen_q:
            self.metrics.on_prefix_cache(queries - seen_q, hits - seen_h)
            self._prefix_seen = (queries, hits)

    def _flush_events(self) -> None:
        events = self.kv.take_events()
        if events and self.events is not None:
            self.events.publish(events)
