"""Chaos bench: the embedded mesh (``brixmesh up --engines 4 --engine sim``, started in this process through
:class:`brixmesh.cli.mesh.Mesh`) under a steady open-loop mix of streamed and non-streamed requests, one fault
at a time, each measured against issue 10's targets.

Mesh: nats-server (JetStream on disk; restarted on its port with its data), redis-server, every service
supervised as ``brixmesh up`` runs them, two router replicas with RPM/TPM limits in Redis
(``fail-open``), pods re-announced every ``--announce-interval`` seconds. The client sends shared-prefix
prompts (so the KV index matters) with a ``user`` (so every request passes the Redis limiter) to one replica,
round robin, and fails over to the other only when a connection is refused or closed before any response
(what a load balancer in front of two replicas does); a request is never retried after its answer started.

Faults, in turn: SIGKILL an engine; SIGKILL the orchestrator (its supervisor restarts it); restart a router
replica (SIGTERM: a rolling restart drains; a SIGKILLed proxy necessarily cuts what it carries); SIGKILL
kv-index; restart nats-server; stop Redis under ``fail-open`` and, through a third replica, ``fail-closed``;
lose ``pods.removed`` (SIGSTOP the orchestrator, SIGKILL an engine, SIGKILL the stopped orchestrator: the
removal was never announced and the new orchestrator never saw the pod die).

Per fault:
- **failed**: requests that got no first byte of an answer (an HTTP error, a refused connection on every
  replica, or an SSE error before any content); **cut**: streams that ended after some content, and how many
  of them ended with an SSE error event. Counted over requests in flight at the fault or started until the
  index check.
- **recovery s**: from the fault (a kill; the end of an outage) until every supervised service is ready,
  the orchestrator has all engines ready, every router knows them, the fault's own condition holds (a
  restarted process is back), and every request started from then on succeeded.
- **ghosts**: pods that a consumer (each router, kv-index, autoscaler; ``GET /admin/pods``) still holds
  3 announce intervals after recovery while the orchestrator no longer has them (or has them exited);
  ghosts an earlier fault left are shown apart and not counted again.
- **index = engines**: load paused after the ghost check; within 5 s every router's index of every pod
  (``GET /admin/kv/pods/{pod}``) equals that engine's cached blocks (``GET /admin/kv/blocks``), and pods
  the orchestrator no longer has hold nothing (a late index is watched up to 30 s: late or never). The
  window opens at recovery + 3 announce intervals, not at the restart: an index equal here may have been
  stale for longer; one not equal here is a miss by any reading.
- **same pids** (orchestrator restart): the engines' pids before and after.

Targets (issue 10): no failed or cut request for faults that do not hit an engine (for ``fail-closed`` the
refusals while Redis is down are the policy: none after it is back); for engine faults only the killed
engine's in-flight requests fail, every cut stream ends with an SSE error event; 0 ghosts; every index equal
within 5 s; same engine pids across an orchestrator restart. During the orchestrator restart ``brixmesh
status`` (before/after) and ``brixmesh tap 'pods.>' 'mesh.heartbeat.>'`` are captured into the log.

Usage: ``.venv/bin/python bench/chaos.py [--quick] [--rounds N] [--only NAME] [--out DIR]``. Writes
``report.md``, ``results.json``, ``chaos.log`` and ``restart-visibility.log`` (status and tap around the
orchestrator restart) under ``bench/results/chaos-<time>/``; the verdict is the last line printed; the exit
status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from brixbench.report import markdown_table
from brixbench.text import TextSource, single_token_words
from brixbench.workloads import Job, shared_prefix
from brixmesh.cli.mesh import Mesh, MeshOptions, bundled_tokenizer_dirs
from brixmesh.common.admin import bearer_header
from brixmesh.common.ports import free_port
from brixmesh.common.servers import RedisServer
from brixmesh.common.supervisor import ProcessState, Supervisor

MODEL = "tiny-llama"
INDEX_WINDOW_S = 5.0
INDEX_PATIENCE_S = 30.0
"""How long a late index is still watched, to tell late from never."""
GHOST_INTERVALS = 3
BRIXMESH = [sys.executable, "-m", "brixmesh.cli.main"]


# --- the load ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    started: float
    stream: bool
    finished: float = 0.0
    router: str = ""
    pod: str = ""
    content: bool = False
    """Some generated text arrived."""
    complete: bool = False
    sse_error: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.complete and not self.error

    @property
    def failed(self) -> bool:
        """No first byte of an answer."""
        return not self.ok and not self.content

    @property
    def cut(self) -> bool:
        """A stream that ended after some content without finishing."""
        return not self.ok and self.content


class Load:
    """Open-loop Poisson arrivals over a cycle of shared-prefix jobs, ``stream_share`` of them streamed."""

    def __init__(self, jobs: list[Job], routers: list[str], rate: float, stream_share: float,
                 seed: int) -> None:
        self.jobs = itertools.cycle(jobs)
        self.routers = routers
        self.rate = rate
        self.stream_share = stream_share
        self.rng = random.Random(seed)
        self.outcomes: list[Outcome] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._running = asyncio.Event()
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._arrivals: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Load":
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=5, sock_read=30)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)
        self._running.set()
        self._arrivals = asyncio.create_task(self._arrive())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._arrivals is not None and self._session is not None
        self._arrivals.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._arrivals
        await self.pause()
        await self._session.close()

    async def pause(self) -> None:
        """Stop sending and wait for what is in flight."""
        self._running.clear()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))

    def resume(self) -> None:
        self._running.set()

    def between(self, start: float, end: float) -> list[Outcome]:
        """Requests in flight at ``start`` or started before ``end``."""
        return [o for o in self.outcomes if o.started < end and (o.finished == 0.0 or o.finished >= start)]

    def in_flight_per_pod(self) -> dict[str, int]:
        """Streams answering now, per pod (a pod is known once the answer's headers arrived)."""
        counts: dict[str, int] = {}
        for outcome in self.outcomes[-200:]:
            if outcome.stream and outcome.finished == 0.0 and outcome.pod:
                counts[outcome.pod] = counts.get(outcome.pod, 0) + 1
        return counts

    async def _arrive(self) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(self.rate))
            await self._running.wait()
            job = next(self.jobs)
            stream = self.rng.random() < self.stream_share
            body = {"model": MODEL, "prompt": job.prompt, "max_tokens": job.max_tokens[0], "stream": stream,
                    "ignore_eos": True, "user": f"chaos-{self.rng.randrange(8)}"}
            outcome = Outcome(time.monotonic(), stream)
            self.outcomes.append(outcome)
            task = asyncio.create_task(self._send(body, outcome))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, body: dict[str, Any], outcome: Outcome) -> None:
        assert self._session is not None
        first = next(self._turn)
        routers = list(self.routers)
        try:
            for attempt in range(len(routers)):
                outcome.router = routers[(first + attempt) % len(routers)]
                try:
                    async with self._session.post(f"{outcome.router}/v1/completions", json=body) as response:
                        await self._read(response, outcome)
                    return
                except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                    # refused, or closed before any answer: the request never reached a pod; try the other
                    if outcome.content or outcome.pod:
                        raise
                    outcome.error = f"{exc.__class__.__name__}: {exc}"[:200]
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            outcome.error = f"{exc.__class__.__name__}: {exc}"[:200]
        finally:
            outcome.finished = time.monotonic()

    @staticmethod
    async def _read(response: aiohttp.ClientResponse, outcome: Outcome) -> None:
        outcome.error = ""
        outcome.pod = response.headers.get("x-brixmesh-pod", "")
        if response.status != 200:
            outcome.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            return
        if not outcome.stream:
            answer = await response.json()
            outcome.complete = bool(answer.get("choices"))
            outcome.content = outcome.complete
            return
        async for raw in response.content:
            if not raw.startswith(b"data: "):
                continue
            payload = raw[6:].strip()
            if payload == b"[DONE]":
                outcome.complete = True
                return
            chunk = json.loads(payload)
            if "error" in chunk:
                outcome.sse_error = True
                outcome.error = str(chunk["error"].get("message", chunk["error"]))[:200]
                return
            if any(choice.get("text") for choice in chunk.get("choices", ())):
                outcome.content = True
        outcome.error = "stream ended without [DONE]"


def chaos_jobs(quick: bool) -> list[Job]:
    tokenizer = Path(bundled_tokenizer_dirs(MODEL)[MODEL]) / "tokenizer.json"
    source = TextSource(single_token_words(tokenizer))
    # many questions per shared prefix: no prompt repeats within a run, so the engines keep caching (and
    # publishing KV events) through every fault instead of settling once each prompt was seen
    return shared_prefix(source, groups=6 if quick else 12, prompts_per_group=1000, system_len=512,
                         question_len=48, output_len=160, range_ratio=0.4, seed=7)


# --- the mesh and what it holds -----------------------------------------------------------------------------


class ChaosMesh:
    """The embedded mesh (its own NATS server, restarted here on its port), Redis, extra router replicas."""

    def __init__(self, state_dir: Path, engines: int, announce_interval_s: float,
                 log: Callable[[str], None]) -> None:
        self.state_dir = state_dir
        self.engines = engines
        self.announce_interval_s = announce_interval_s
        self.log = log
        self.redis = RedisServer(state_dir / "redis", port=free_port())
        self.mesh: Mesh | None = None
        self.routers: dict[str, str] = {}
        """supervised name -> base URL of every router replica running now"""
        self.engine_pids: set[int] = set()
        self.http = httpx.AsyncClient(timeout=3.0)

    @property
    def supervisor(self) -> Supervisor:
        assert self.mesh is not None
        return self.mesh.supervisor

    def url(self, service: str) -> str:
        assert self.mesh is not None
        return self.mesh.services[service].url

    async def start(self) -> None:
        await asyncio.to_thread(self.redis.start)
        os.environ.update({
            "BRIXMESH_ANNOUNCE_INTERVAL_S": str(self.announce_interval_s),
            "BRIXMESH_HEARTBEAT_INTERVAL_S": "1.0",
            "BRIXMESH_REDIS_URL": self.redis.url,
            "BRIXMESH_RPM_LIMIT": "1000000",
            "BRIXMESH_TPM_LIMIT": "1000000000",
            "BRIXMESH_LIMITS_POLICY": "fail-open",
        })  # fmt: skip
        options = MeshOptions(free_port(), self.state_dir, None, self.engines, "sim", MODEL, 180.0)
        self.mesh = Mesh(options, report=self.log)
        not_ready = await self.mesh.start()
        self.http.headers.update(bearer_header(self.mesh.admin_token))  # GET /admin/* needs it too
        if not_ready:
            raise RuntimeError(f"not ready: {', '.join(not_ready)} (logs: {self.state_dir / 'logs'})")
        self.routers["router"] = self.url("router")
        await self.add_router("router-2", "fail-open")

    async def add_router(self, name: str, policy: str) -> str:
        """Another replica, configured as the mesh's own router (NATS user, tokens) but on its own port."""
        port = free_port()
        spec = self.supervisor.processes["router"].spec
        assert spec.readiness is not None
        spec = dataclasses.replace(
            spec, name=name, env={**spec.env, "BRIXMESH_PORT": str(port), "BRIXMESH_LIMITS_POLICY": policy},
            log_path=self.state_dir / "logs" / f"{name}.log",
            readiness=dataclasses.replace(spec.readiness, url=f"http://127.0.0.1:{port}/readyz"),
        )
        process = self.supervisor.add(spec)
        process.start()
        if not await process.wait_ready(120):
            raise RuntimeError(f"{name} not ready (log: {spec.log_path})")
        self.routers[name] = f"http://127.0.0.1:{port}"
        return self.routers[name]

    async def remove_router(self, name: str) -> None:
        self.routers.pop(name)
        await self.supervisor.remove(name)

    async def stop(self) -> None:
        await self.http.aclose()
        if self.mesh is not None:
            await self.mesh.stop()
        await asyncio.to_thread(self.redis.stop)
        for pid in self.engine_pids:  # engines an orchestrator left behind (adopted or orphaned)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def restart_nats(self, down_s: float) -> None:
        """Stop the mesh's nats-server and start it again, same port, same configuration, same store."""
        assert self.mesh is not None and self.mesh.nats is not None
        running = self.mesh.nats
        await asyncio.to_thread(running.stop)
        await asyncio.sleep(down_s)
        again = dataclasses.replace(running, port=int(running.url.rsplit(":", 1)[1]))
        self.mesh.nats = await asyncio.to_thread(again.start)

    async def stop_redis(self) -> None:
        await asyncio.to_thread(self.redis.stop)

    async def start_redis(self) -> None:
        self.redis = RedisServer(self.redis.data_dir, port=self.redis.port)
        await asyncio.to_thread(self.redis.start)

    # --- observation (None: the service did not answer) ---

    async def _get(self, url: str) -> Any:
        try:
            response = await self.http.get(url)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    async def pods(self) -> list[dict[str, Any]] | None:
        """The orchestrator's live pods of the default deployment (exited ones left out)."""
        listing = await self._get(f"{self.url('orchestrator')}/v1/pods")
        if listing is None:
            return None
        pods = [p for p in listing["data"] if p["pod"]["deployment"] == "default" and p["phase"] != "exited"]
        self.engine_pids |= {p["pid"] for p in pods if p["pid"]}
        return pods

    async def ready_pods(self) -> dict[str, dict[str, Any]] | None:
        pods = await self.pods()
        return None if pods is None else {p["pod"]["pod"]: p for p in pods if p["ready"]}

    def consumers(self) -> dict[str, str]:
        """Every service holding pods: name -> base URL."""
        return {**self.routers, "kv-index": self.url("kv-index"), "autoscaler": self.url("autoscaler")}

    async def held_pods(self, url: str) -> set[str] | None:
        held = await self._get(f"{url}/admin/pods")
        return None if held is None else set(held["pods"])

    async def engine_blocks(self, endpoint: str) -> set[int] | None:
        blocks = await self._get(f"{endpoint.rstrip('/')}/admin/kv/blocks")
        return None if blocks is None else set(blocks["hashes"])

    async def index_blocks(self, router: str) -> dict[str, set[int]] | None:
        listing = await self._get(f"{router}/admin/kv/pods")
        if listing is None:
            return None
        found = {}
        for entry in listing["pods"]:
            held = await self._get(f"{router}/admin/kv/pods/{entry['pod']}")
            found[entry["pod"]] = set(held["media"].get("GPU", ())) if held is not None else set()
        return found

    async def healthy(self) -> bool:
        """Every supervised service ready, all engines ready, every router knows them."""
        if any(p.state is not ProcessState.READY for p in self.supervisor.processes.values()):
            return False
        ready = await self.ready_pods()
        if ready is None or len(ready) < self.engines:
            return False
        for url in self.routers.values():
            held = await self.held_pods(url)
            if held is None or not set(ready) <= held:
                return False
        return True

    def process_pid(self, name: str) -> int | None:
        process = self.supervisor.processes[name]
        return process.pid if process.state is ProcessState.READY else None


# --- faults ----------------------------------------------------------------------------------------------


@dataclass
class Injected:
    """What a fault did: the engine pods it killed, and when the fault's own condition is restored."""

    victims: set[str] = field(default_factory=set)
    killed_at: float | None = None
    """When the victims were killed: only requests they carried then may fail (default: the injection)."""
    restored: Callable[[], Awaitable[bool]] | None = None
    cleanup: Callable[[], Awaitable[None]] | None = None
    ended_at: float | None = None
    """When an outage ended (the server is back); recovery counts from here (default: the injection)."""
    expected_failures_until: float | None = None
    """fail-closed: refusals of requests started before this moment are the policy, not a miss."""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fault:
    name: str
    hits_engine: bool
    inject: Callable[[ChaosMesh, Load], Awaitable[Injected]]


def restarted(mesh: ChaosMesh, name: str, old_pid: int | None) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        pid = mesh.process_pid(name)
        return pid is not None and pid != old_pid

    return check


async def busiest_pod(mesh: ChaosMesh, load: Load, wait_s: float = 5.0) -> dict[str, Any]:
    """The ready engine pod with the most streams of ours in flight, once one has some (so that the kill
    cuts streams and shows how they end)."""
    deadline = time.monotonic() + wait_s
    while not load.in_flight_per_pod() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    ready = await mesh.ready_pods()
    if not ready:
        raise RuntimeError("no ready engine pod to kill")
    counts = load.in_flight_per_pod()
    return ready[max(sorted(ready), key=lambda pod: counts.get(pod, 0))]


async def kill_engine(mesh: ChaosMesh, load: Load) -> Injected:
    victim = await busiest_pod(mesh, load)
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    async def replaced() -> bool:
        ready = await mesh.ready_pods()
        return ready is not None and victim["pid"] not in {p["pid"] for p in ready.values()}

    name = victim["pod"]["pod"]
    return Injected({name}, killed_at, replaced, notes=[f"killed {name} (pid {victim['pid']})"])


async def kill_orchestrator(mesh: ChaosMesh, load: Load) -> Injected:
    pid = mesh.process_pid("orchestrator")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return Injected(restored=restarted(mesh, "orchestrator", pid))


def restart_service(name: str, signum: int) -> Callable[[ChaosMesh, Load], Awaitable[Injected]]:
    async def inject(mesh: ChaosMesh, load: Load) -> Injected:
        pid = mesh.process_pid(name)
        assert pid is not None
        os.kill(pid, signum)
        return Injected(restored=restarted(mesh, name, pid))

    return inject


async def restart_nats(mesh: ChaosMesh, load: Load) -> Injected:
    await mesh.restart_nats(down_s=1.0)
    return Injected(ended_at=time.monotonic(),
                    notes=["nats-server down 1 s, restarted on its port with its JetStream store"])


REDIS_DOWN_S = 4.0


async def stop_redis_fail_open(mesh: ChaosMesh, load: Load) -> Injected:
    await mesh.stop_redis()
    await asyncio.sleep(REDIS_DOWN_S)
    await mesh.start_redis()
    return Injected(ended_at=time.monotonic(),
                    notes=[f"Redis down {REDIS_DOWN_S:.0f} s; both replicas fail-open"])


async def stop_redis_fail_closed(mesh: ChaosMesh, load: Load) -> Injected:
    """Through a third replica configured fail-closed (the others keep serving nothing meanwhile)."""
    url = await mesh.add_router("router-closed", "fail-closed")
    others = list(load.routers)
    load.routers[:] = [url]
    await asyncio.sleep(2.0)
    await mesh.stop_redis()
    await asyncio.sleep(REDIS_DOWN_S)
    await mesh.start_redis()
    back = time.monotonic()

    async def cleanup() -> None:
        load.routers[:] = others
        await mesh.remove_router("router-closed")

    return Injected(cleanup=cleanup, ended_at=back, expected_failures_until=back,
                    notes=[f"Redis down {REDIS_DOWN_S:.0f} s; load on one fail-closed replica"])


async def lose_pod_removal(mesh: ChaosMesh, load: Load) -> Injected:
    orchestrator = mesh.process_pid("orchestrator")
    assert orchestrator is not None
    victim = await busiest_pod(mesh, load)
    os.kill(orchestrator, signal.SIGSTOP)
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    await asyncio.sleep(0.5)
    os.kill(orchestrator, signal.SIGKILL)  # a stopped process dies without running again: nothing announced
    return Injected({victim["pod"]["pod"]}, killed_at, restarted(mesh, "orchestrator", orchestrator),
                    notes=[f"orchestrator stopped, {victim['pod']['pod']} (pid {victim['pid']}) killed, "
                           "orchestrator killed"])


FAULTS = (
    Fault("engine SIGKILL", True, kill_engine),
    Fault("orchestrator SIGKILL", False, kill_orchestrator),
    Fault("router replica restart", False, restart_service("router", signal.SIGTERM)),
    Fault("kv-index SIGKILL", False, restart_service("kv-index", signal.SIGKILL)),
    Fault("nats-server restart", False, restart_nats),
    Fault("Redis stop, fail-open", False, stop_redis_fail_open),
    Fault("Redis stop, fail-closed", False, stop_redis_fail_closed),
    Fault("pods.removed lost", True, lose_pod_removal),
)


# --- one fault, measured -----------------------------------------------------------------------------------


@dataclass
class FaultResult:
    fault: str
    round: int
    requests: int = 0
    failed: int = 0
    failed_other_pods: int = 0
    """Failures not explained by the fault (engine faults: not on a killed pod, or started after the kill)."""
    expected_refusals: int = 0
    cut: int = 0
    cut_with_sse_error: int = 0
    cut_other_pods: int = 0
    recovery_s: float | None = None
    ghosts: dict[str, list[str]] = field(default_factory=dict)
    """consumer -> pods it holds that the orchestrator has not (3 announce intervals after recovery)"""
    carried_ghosts: int = 0
    """Of those, ghosts already there before this fault (an earlier fault's misses, not counted again)."""
    index_equal_after_s: float | None = None
    index_mismatch: list[str] = field(default_factory=list)
    index_blocks: int = 0
    """Cached blocks compared (over every engine)."""
    same_engine_pids: bool | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float,
                   interval_s: float = 0.2) -> float | None:
    """Seconds until ``check`` held (None: it did not within ``timeout_s``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(interval_s)
    return None


async def ghost_pods(mesh: ChaosMesh) -> dict[str, list[str]]:
    live = await mesh.pods()
    names = {p["pod"]["pod"] for p in live} if live is not None else set()
    ghosts = {}
    for consumer, url in mesh.consumers().items():
        held = await mesh.held_pods(url)
        if held is None:
            ghosts[consumer] = ["(no answer)"]
        elif held - names:
            ghosts[consumer] = sorted(held - names)
    return ghosts


async def index_mismatch(mesh: ChaosMesh) -> tuple[list[str], int]:
    """What differs between each router's index and the engines' caches (empty: equal), and how many
    blocks the engines cache."""
    live = await mesh.pods()
    if live is None:
        return ["orchestrator did not answer"], 0
    truth: dict[str, set[int]] = {}
    for pod in live:
        blocks = await mesh.engine_blocks(pod["pod"]["endpoint"])
        if blocks is not None:
            truth[pod["pod"]["pod"]] = blocks
    differences = []
    for name, url in mesh.routers.items():
        index = await mesh.index_blocks(url)
        if index is None:
            differences.append(f"{name}: no answer")
            continue
        for pod in sorted(set(index) | set(truth)):
            held, cached = index.get(pod, set()), truth.get(pod, set())
            if held != cached:
                differences.append(f"{name}/{pod}: {len(cached - held)} missing, {len(held - cached)} extra")
    return differences, sum(len(blocks) for blocks in truth.values())


async def run_fault(fault: Fault, round_: int, mesh: ChaosMesh, load: Load, settle_s: float,
                    recover_timeout_s: float, capture: Path | None) -> FaultResult:
    result = FaultResult(fault.name, round_)
    await asyncio.sleep(settle_s)
    pids_before = {p["pid"] for p in (await mesh.pods() or [])}
    ghosts_before = await ghost_pods(mesh)
    tap = None
    if capture is not None:
        tap = await asyncio.to_thread(start_capture, mesh, capture, "orchestrator")
    t0 = time.monotonic()
    try:
        injected = await fault.inject(mesh, load)
    except Exception as exc:  # a fault that could not be injected is reported, not a crash of the bench
        result.errors.append(f"inject: {exc.__class__.__name__}: {exc}")
        injected = Injected()
    result.notes += injected.notes

    async def recovered() -> bool:
        return (injected.restored is None or await injected.restored()) and await mesh.healthy()

    healthy_after = await wait_for(recovered, recover_timeout_s)
    t_healthy = time.monotonic()
    if tap is not None and capture is not None:
        result.notes.append(await finish_capture(mesh, tap, capture, "orchestrator"))
    await asyncio.sleep(GHOST_INTERVALS * mesh.announce_interval_s)
    result.ghosts = await ghost_pods(mesh)
    result.carried_ghosts = sum(len(set(held) & set(ghosts_before.get(consumer, ())))
                                for consumer, held in result.ghosts.items())
    if fault.name.startswith("orchestrator"):
        after = {p["pid"] for p in (await mesh.pods() or [])}
        result.same_engine_pids = after == pids_before
        if not result.same_engine_pids:
            result.notes.append(f"engine pids {sorted(pids_before)} -> {sorted(after)}")
    await load.pause()
    t_end = time.monotonic()
    started = time.monotonic()
    while time.monotonic() - started < INDEX_PATIENCE_S:
        mismatch, result.index_blocks = await index_mismatch(mesh)
        if time.monotonic() - started <= INDEX_WINDOW_S or not result.index_mismatch:
            result.index_mismatch = mismatch  # kept as it stood at the end of the window
        if not mismatch:
            result.index_equal_after_s = round(time.monotonic() - started, 2)
            break
        await asyncio.sleep(0.25)
    if injected.cleanup is not None:
        await injected.cleanup()
    load.resume()

    seen = load.between(t0, t_end)
    result.requests = len(seen)
    bad_moments = []
    for outcome in seen:
        if outcome.ok:
            continue
        bad_moments.append(outcome.started)
        killed_at = injected.killed_at or t0
        on_victim = fault.hits_engine and outcome.started < killed_at and outcome.pod in injected.victims
        if outcome.failed:
            policy_until = injected.expected_failures_until
            if policy_until is not None and outcome.started < policy_until:
                result.expected_refusals += 1
                continue
            result.failed += 1
            result.failed_other_pods += not on_victim
        else:
            result.cut += 1
            result.cut_with_sse_error += outcome.sse_error
            result.cut_other_pods += not on_victim
        if len(result.errors) < 3 and outcome.error not in result.errors:
            result.errors.append(outcome.error)
    if healthy_after is not None:
        last_bad = max(bad_moments, default=t0)
        since = injected.ended_at or injected.killed_at or t0
        result.recovery_s = round(max(0.0, max(t_healthy, last_bad) - since), 2)
    judge(fault, result)
    return result


def judge(fault: Fault, result: FaultResult) -> None:
    missed = result.missed
    if result.recovery_s is None:
        missed.append("never recovered")
    if fault.hits_engine:
        if result.failed_other_pods:
            missed.append(f"{result.failed_other_pods} failed beyond the killed engine's in-flight requests")
        if result.cut_other_pods:
            missed.append(f"{result.cut_other_pods} streams cut beyond the killed engine's")
        if result.cut_with_sse_error < result.cut:
            missed.append(f"{result.cut - result.cut_with_sse_error} cut streams without an SSE error event")
    else:
        if result.failed:
            missed.append(f"{result.failed} failed requests")
        if result.cut:
            missed.append(f"{result.cut} cut streams")
    new_ghosts = sum(len(held) for held in result.ghosts.values()) - result.carried_ghosts
    if new_ghosts:
        held = "; ".join(f"{consumer}: {','.join(pods)}" for consumer, pods in result.ghosts.items())
        missed.append(f"{new_ghosts} new ghost pods ({held})")
    if result.index_equal_after_s is None or result.index_equal_after_s > INDEX_WINDOW_S:
        missed.append(f"index != engines after {INDEX_WINDOW_S:.0f} s "
                      f"({len(result.index_mismatch)} differences)")
    if result.same_engine_pids is False:
        missed.append("engine pids changed")


# --- brixmesh status / tap while a service restarts ---------------------------------------------------------


def cli(mesh: ChaosMesh, *args: str) -> str:
    done = subprocess.run([*BRIXMESH, *args, "--state-dir", str(mesh.state_dir)], capture_output=True,
                          text=True, timeout=60)
    return done.stdout + done.stderr


TAP_MARK = "## brixmesh tap during the restart"


def start_capture(mesh: ChaosMesh, path: Path, service: str) -> subprocess.Popen[str]:
    """``brixmesh status`` into ``path``, then a tap, returned once it shows ``service``'s heartbeat."""
    with path.open("a") as out:
        out.write(f"\n## brixmesh status before\n{cli(mesh, 'status')}\n{TAP_MARK}\n")
        out.flush()
        tap = subprocess.Popen(
            [*BRIXMESH, "tap", "pods.>", "mesh.heartbeat.>", "--state-dir", str(mesh.state_dir)],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    deadline = time.monotonic() + 15
    while f"mesh.heartbeat.{service} " not in path.read_text().rsplit(TAP_MARK, 1)[-1]:
        if time.monotonic() > deadline or tap.poll() is not None:
            break  # the capture shows what it got; the fault goes on
        time.sleep(0.1)
    return tap


async def finish_capture(mesh: ChaosMesh, tap: subprocess.Popen[str], path: Path, service: str) -> str:
    """Stops the tap, appends ``brixmesh status``; returns what the tap showed of the restart."""
    await asyncio.sleep(2 * mesh.announce_interval_s)
    tap.send_signal(signal.SIGINT)
    try:
        await asyncio.to_thread(tap.wait, 10)
    except subprocess.TimeoutExpired:
        tap.kill()
    tapped = path.read_text().rsplit(TAP_MARK, 1)[-1].splitlines()
    pod_events = sum(" pods." in line for line in tapped)
    instances = {m.group(1) for line in tapped if f"mesh.heartbeat.{service} " in line
                 for m in [re.search(r"instance_id=(\S+)", line)] if m}
    with path.open("a") as out:
        out.write(f"\n## brixmesh status after\n{await asyncio.to_thread(cli, mesh, 'status')}\n")
    return (f"tap during the restart: {pod_events} pods.* events, {service} heartbeats from "
            f"{len(instances)} instances ({path.name})")


# --- report ------------------------------------------------------------------------------------------------

COLUMNS = ("fault", "requests", "failed", "cut (SSE error)", "recovery s", "ghosts", "index = engines",
           "same pids", "verdict")


def row(result: FaultResult) -> list[str]:
    failed = str(result.failed)
    failed += f" (+{result.expected_refusals} refused by policy)" if result.expected_refusals else ""
    equal_after = result.index_equal_after_s
    if equal_after is None:
        index = f"NO (not after {INDEX_PATIENCE_S:.0f} s)"
    elif equal_after > INDEX_WINDOW_S:
        index = f"NO (equal after {equal_after:.1f} s)"
    else:
        index = f"yes ({equal_after:.1f} s, {result.index_blocks} blocks)"
    ghosts = str(sum(len(v) for v in result.ghosts.values()) - result.carried_ghosts)
    ghosts += f" (+{result.carried_ghosts} earlier)" if result.carried_ghosts else ""
    pids = {None: "-", True: "yes", False: "NO"}[result.same_engine_pids]
    recovery = "never" if result.recovery_s is None else f"{result.recovery_s:.1f}"
    verdict = "ok" if not result.missed else "MISSED: " + "; ".join(result.missed)
    name = f"{result.fault} #{result.round}" if result.round > 1 else result.fault
    cut = f"{result.cut} ({result.cut_with_sse_error})"
    return [name, str(result.requests), failed, cut, recovery, ghosts, index, pids, verdict]


def write_report(out: Path, results: list[FaultResult], meta: dict[str, Any]) -> str:
    table = markdown_table(COLUMNS, [row(r) for r in results])
    details = []
    for r in results:
        lines = [*r.notes, *(f"error: {e}" for e in r.errors if e),
                 *(f"index: {m}" for m in r.index_mismatch[:6])]
        if lines:
            details.append(f"- **{r.fault}**: " + "; ".join(lines))
    text = "\n".join([
        "# Chaos bench", "",
        f"{meta['engines']} simulated engines, two router replicas, {meta['rate']} req/s "
        f"({meta['stream_share']:.0%} streamed), announce interval {meta['announce_interval_s']} s, "
        f"{meta['duration_s']:.0f} s in all.", "", table, "", *details, "",
    ])  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    payload = {"meta": meta, "results": [dataclasses.asdict(r) for r in results]}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    return table


@contextlib.contextmanager
def state_directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bm-chaos-") as short:  # short: ipc:// socket paths are capped
        yield Path(short)


async def run(args: argparse.Namespace, faults: tuple[Fault, ...]) -> int:
    out: Path = args.out or Path("bench/results") / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "chaos.log"

    def log(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, flush=True)
        with log_path.open("a") as handle:
            handle.write(stamped + "\n")

    began = time.monotonic()
    results: list[FaultResult] = []
    with state_directory(args.state_dir) as state_dir:
        mesh = ChaosMesh(state_dir, args.engines, args.announce_interval, log)
        try:
            log(f"starting the mesh in {state_dir}")
            await mesh.start()
            log(f"mesh up: routers {', '.join(mesh.routers.values())}")
            load = Load(chaos_jobs(args.quick), list(mesh.routers.values()), args.rate, 0.5, args.seed)
            async with load:
                for round_ in range(1, args.rounds + 1):
                    for fault in faults:
                        log(f"fault: {fault.name} (round {round_})")
                        visible = fault.name.startswith("orchestrator") and round_ == 1
                        capture = out / "restart-visibility.log" if visible else None
                        result = await run_fault(fault, round_, mesh, load, args.settle, args.recover_timeout,
                                                 capture)
                        results.append(result)
                        log(" | ".join(row(result)))
        finally:
            await mesh.stop()
    meta = {"engines": args.engines, "rate": args.rate, "stream_share": 0.5, "rounds": args.rounds,
            "announce_interval_s": args.announce_interval, "duration_s": time.monotonic() - began}
    print(write_report(out, results, meta))
    missed = [r for r in results if r.missed]
    print(f"report: {out / 'report.md'}")
    if missed:
        print(f"VERDICT: FAIL ({len(missed)} of {len(results)} fault runs missed a target: "
              f"{', '.join(sorted({r.fault for r in missed}))})")
        return 1
    print(f"VERDICT: PASS (all {len(results)} fault runs met every target)")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every fault once, short settles (about 2 min)")
    parser.add_argument("--rounds", type=int, default=None, help="runs of every fault (default 3, --quick 1)")
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--rate", type=float, default=None, help="requests per second (default 6, --quick 4)")
    parser.add_argument("--announce-interval", type=float, default=1.0,
                        help="seconds between the orchestrator's re-announcements")
    parser.add_argument("--settle", type=float, default=None, help="seconds of steady load before each fault")
    parser.add_argument("--recover-timeout", type=float, default=None,
                        help="seconds a fault may take to recover (default 60, --quick 30)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the faults whose name contains this (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the mesh's state and logs here")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.rate = args.rate or (4.0 if args.quick else 6.0)
    args.recover_timeout = args.recover_timeout or (30.0 if args.quick else 60.0)
    args.settle = args.settle if args.settle is not None else (3.0 if args.quick else 8.0)
    return args


def selected(only: list[str]) -> tuple[Fault, ...]:
    return tuple(f for f in FAULTS if not only or any(o.lower() in f.name.lower() for o in only))


if __name__ == "__main__":
    arguments = parse()
    sys.exit(asyncio.run(run(arguments, selected(arguments.only))))
