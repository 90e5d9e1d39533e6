"""The load generator: sends jobs at their arrival times, streams every answer and times every chunk.

Where a request goes is the :class:`Target`'s business: a router contender is one base URL; the oracle picks
an engine per request. Wall times are divided by ``time_scale`` so every number is in modelled seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import msgspec

from brixbench.arrivals import Arrivals, ClosedLoop
from brixbench.engine_metrics import EngineScraper, FleetNumbers, fleet_numbers
from brixbench.stats import RequestRecord, Slo, Summary, summarize
from brixbench.workloads import Job


class Target(Protocol):
    async def pick(self, body: dict[str, Any]) -> str:
        """Base URL for this request body."""
        ...

    def release(self, base_url: str, body: dict[str, Any]) -> None:
        """The request ``body`` sent to ``base_url`` finished (or failed)."""
        ...


@dataclass(frozen=True, slots=True)
class FixedTarget:
    base_url: str

    async def pick(self, body: dict[str, Any]) -> str:
        return self.base_url

    def release(self, base_url: str, body: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True, slots=True)
class RunResult:
    records: list[RequestRecord]
    summary: Summary
    engines: FleetNumbers
    duration_s: float
    """Modelled seconds from the first send to the last answer."""
    completions: list[tuple[float, int]]
    """(modelled finish time, output tokens) per successful request: throughput over time."""
    waiting_timeline: list[tuple[float, float]]
    """(modelled time, requests waiting summed over engines) at every scrape."""


class _Chunk(msgspec.Struct):
    choices: list[dict[str, Any]] = []
    usage: dict[str, Any] | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def _chunk_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or ""


class LoadClient:
    def __init__(self, model: str, *, time_scale: float = 1.0, request_timeout_s: float = 1200.0,
                 headers: dict[str, str] | None = None) -> None:
        self.model = model
        self.time_scale = time_scale
        self.request_timeout_s = request_timeout_s
        self.headers = headers or {}

    def _body(self, job: Job, turn: int, history: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": job.max_tokens[turn], "stream": True,
                                "ignore_eos": True, "stream_options": {"include_usage": True}}
        if job.api == "completions":
            body["prompt"] = job.prompt
        else:
            body["messages"] = [*history, {"role": "user", "content": job.turns[turn]}]
        return body

    async def _send(self, session: aiohttp.ClientSession, target: Target, body: dict[str, Any],
                    record: RequestRecord, t0: float) -> str:
        """One streamed request; fills ``record`` and returns the generated text."""
        scale = self.time_scale
        url = await target.pick(body)
        record.target = url
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        parts: list[str] = []
        started = time.monotonic()
        record.sent_s = (started - t0) / scale
        last = started
        try:
            async with session.post(url + path, json=body, headers=self.headers) as response:
                if response.status != 200:
                    record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                    return ""
                async for raw in response.content:
                    if not raw.startswith(b"data: "):
                        continue
                    payload = raw[6:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = _decode_chunk(payload)
                    if chunk.usage is not None:
                        record.prompt_tokens = int(chunk.usage.get("prompt_tokens") or 0)
                        record.output_tokens = int(chunk.usage.get("completion_tokens") or 0)
                        details = chunk.usage.get("prompt_tokens_details") or {}
                        if details.get("cached_tokens") is not None:
                            record.cached_tokens = int(details["cached_tokens"])
                    for choice in chunk.choices:
                        text = _chunk_text(choice)
                        if not text:
                            continue
                        now = time.monotonic()
                        if record.ttft_s is None:
                            record.ttft_s = (now - started) / scale
                        else:
                            record.chunk_gaps_s.append((now - last) / scale)
                        last = now
                        parts.append(text)
            record.e2e_s = (time.monotonic() - started) / scale
            record.ok = record.ttft_s is not None
            if not record.ok:
                record.error = "stream ended without content"
        except (TimeoutError, aiohttp.ClientError, msgspec.DecodeError) as exc:
            record.error = f"{exc.__class__.__name__}: {exc}"[:200]
        finally:
            target.release(url, body)
        if record.ok and not record.output_tokens:
            record.output_tokens = len(record.chunk_gaps_s) + 1
        return "".join(parts)

    async def _run_job(self, session: aiohttp.ClientSession, target: Target, job: Job, t0: float,
                       records: list[RequestRecord], on_done: Callable[[], None]) -> None:
        history: list[dict[str, str]] = []
        if job.api == "chat" and job.system:
            history.append({"role": "system", "content": job.system})
        for turn in range(len(job.turns)):
            body = self._body(job, turn, history)
            record = RequestRecord(job.id, turn, 0.0, prompt=body.get("messages", body.get("prompt")))
            records.append(record)
            answer = record.answer = await self._send(session, target, body, record, t0)
            on_done()
            if not record.ok:
                return  # a conversation stops at its first failed turn, as a user would
            history = [*body.get("messages", []), {"role": "assistant", "content": answer}]

    async def run(self, jobs: Sequence[Job], arrivals: Arrivals, target: Target, *,
                  engine_urls: Sequence[str] = (), slo: Slo | None = None,
                  on_request_done: Callable[[], None] = lambda: None,
                  scrape_interval_s: float = 0.5) -> RunResult:
        records: list[RequestRecord] = []
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                EngineScraper(engine_urls, scrape_interval_s) as scraper:
            t0 = time.monotonic()
            if isinstance(arrivals, ClosedLoop):
                queue: asyncio.Queue[Job] = asyncio.Queue()
                for job in jobs:
                    queue.put_nowait(job)

                async def worker() -> None:
                    while not queue.empty():
                        job = queue.get_nowait()
                        await self._run_job(session, target, job, t0, records, on_request_done)

                await asyncio.gather(*(worker() for _ in range(arrivals.concurrency)))
            else:
                # each job at its own offset; a schedule shorter than the job list ends the run early
                tasks = []
                for offset, job in sorted(zip(arrivals.offsets, jobs), key=lambda pair: pair[0]):
                    delay = t0 + offset * self.time_scale - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(
                        self._run_job(session, target, job, t0, records, on_request_done)))
                await asyncio.gather(*tasks)
            duration = (time.monotonic() - t0) / self.time_scale
        engines = fleet_numbers(scraper.series)
        completions = sorted((r.sent_s + (r.e2e_s or 0.0), r.output_tokens) for r in records if r.ok)
        rounds = min((len(s.samples) for s in scraper.series), default=0)
        waiting = [(scraper.series[0].samples[i][0] / self.time_scale, sum(s.samples[i][1] for s in scraper.series))
                   for i in range(rounds)]
        return RunResult(records, summarize(records, duration, slo), engines, duration, completions, waiting)
