"""Router overhead: direct vs every brixmesh strategy (the default ``kv-aware:3,least-request:2`` included) vs
the Rust routers ``smg`` (sglang-router) and ``vllm-router`` (round_robin, cache_aware), all in front of the
same fast backend.

For each target:

- p50/p99 latency at concurrency 1 (added latency = target p50 - direct p50) and the most requests/s at
  concurrency 64, non-streaming and streaming;
- at a fixed open-loop rate (``--rate``, 500 req/s): the router's CPU seconds per request (user + system of
  its process tree, read from ``/proc``) and the achieved rate;
- for the default strategy once more at that rate while a publisher sends ``--events`` KV events per second
  (50k; one block each, 8 pods, a batch per pod every 10 ms, stores and evictions) into JetStream: the
  router's CPU per request with the events, and the KV event lag p99 (engine time -> applied in the router's
  index, from its ``brixmesh_kv_event_lag_seconds`` histogram over the window);
- head to head (``--rounds``, 3): the default strategy and smg ``cache_aware``, both running, measured in
  turn (CPU per request at the rate, p50 at concurrency 1), the order flipping every round: the host's
  speed drifts over minutes, so the verdicts against smg are the medians of the per-round comparisons.

The backend is a tiny aiohttp server (two processes) that answers at once, so what is measured is the
router. The load generator runs in its own process. Traffic is multi-turn chat: 256 conversations, each
with one of 64 system prompts, growing by a question and an answer per request up to 8 turns (a few hundred
to ~1500 tokens): the default strategy tokenizes every prompt with the tiny model's tokenizer (as a router
with ``BRIXMESH_KV_TOKENIZER_DIRS`` does) and hashes its blocks. The event publisher seeds every pod's block
size before the first brixmesh measurement, so ``kv-aware`` hashes and matches from the first request.

    .venv/bin/python bench/router_overhead.py                  # installs the peers into .brixmesh/peers-venv
    .venv/bin/python bench/router_overhead.py --quick          # about 3 minutes
    .venv/bin/python bench/router_overhead.py --skip-peers --only "brixmesh default"

Results: a table on stdout (the headline on the last line) and JSON in ``bench/results/router_overhead.json``.
Everything binds 127.0.0.1. On a small, shared host the rate may not be reached: the achieved rate is
reported next to every CPU figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".brixmesh" / "peers-venv"
PEERS = ("sglang-router==0.3.2", "vllm-router==0.1.17")
MODEL = "tiny-llama"
DEFAULT_STRATEGY = "kv-aware:3,least-request:2"
STRATEGIES = {
    "random": "random",
    "least-request": "least-request",
    "prefix-cache": "prefix-cache",
    "kv-aware": "kv-aware",
    "default": DEFAULT_STRATEGY,
}
PREFIXES = [f"System prompt number {i}: you are a helpful assistant for topic {i}. " * 4 for i in range(64)]
CONVERSATIONS = 256
MAX_TURNS = 8
ANSWER = "hello there, how are you"
EVENT_PODS = 8
"""Pods the event publisher speaks for: ``w0`` and ``w1`` are the backends (their block size comes from these
events), the others only fill the index."""
EVENT_BLOCK_SIZE = 16
EVENT_BATCH_S = 0.01
EVENT_POD_BLOCKS = 20_000
"""Blocks each publisher pod holds: past it, every stored block evicts the oldest."""


# --- backend ------------------------------------------------------------------------------------------


def run_backend(port: int) -> None:
    import uvloop
    from aiohttp import web

    completion = json.dumps(
        {
            "id": "cmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46},
        }
    ).encode()
    chunk = (
        b'data: {"id":"cmpl-bench","object":"chat.completion.chunk","created":0,"model":"'
        + MODEL.encode()
        + b'","choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n'
    )
    models = json.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
    ).encode()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream":true' not in body.replace(b" ", b""):
            return web.Response(body=completion, content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(5):
            await response.write(chunk)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(body=b"")

    async def list_models(_request: web.Request) -> web.Response:
        return web.Response(body=models, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_get("/health", ok)
    app.router.add_get("/v1/models", list_models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


# --- load generator -----------------------------------------------------------------------------------


class Conversations:
    """Multi-turn chats: each request continues one conversation (its earlier turns are the prompt's prefix)
    with a new question; after ``MAX_TURNS`` the conversation starts over with a new system prompt."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.chats: list[list[dict[str, str]]] = [self._fresh() for _ in range(CONVERSATIONS)]

    def _fresh(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.rng.choice(PREFIXES)}]

    def next_messages(self) -> list[dict[str, str]]:
        slot = self.rng.randrange(CONVERSATIONS)
        chat = self.chats[slot]
        if len(chat) > 2 * MAX_TURNS:
            chat = self.chats[slot] = self._fresh()
        words = " ".join(f"word{self.rng.randrange(5000)}" for _ in range(self.rng.randrange(20, 60)))
        messages = [*chat, {"role": "user", "content": f"question {self.rng.randrange(10**6)}: {words}"}]
        self.chats[slot] = [*messages, {"role": "assistant", "content": ANSWER}]
        return messages


def run_load(
    url: str,
    concurrency: int,
    stream: bool,
    requests: int,
    seconds: float,
    headers: dict[str, str],
    rate: float,
) -> None:
    import aiohttp
    import uvloop

    async def main() -> dict[str, float]:
        conversations = Conversations(7)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> float:
                body = {
                    "model": MODEL,
                    "stream": stream,
                    "max_tokens": 6,
                    "messages": conversations.next_messages(),
                }
                started = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
                    data = await response.read()
                    if response.status != 200 or (stream and not data.endswith(b"data: [DONE]\n\n")):
                        raise RuntimeError(f"{url}: {response.status} {data[:200]!r}")
                return time.perf_counter() - started

            if rate > 0:
                return await at_rate(one, rate, seconds)
            if concurrency == 1:
                for _ in range(min(200, requests)):
                    await one()
                latencies = [await one() for _ in range(requests)]
                latencies.sort()
                return {
                    "p50_ms": 1000 * statistics.median(latencies),
                    "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                    "n": len(latencies),
                }
            done = 0
            measuring = False
            deadline = time.perf_counter() + 1.0 + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await one()
                    if measuring:
                        done += 1

            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            await asyncio.sleep(1.0)
            measuring, start = True, time.perf_counter()
            await asyncio.gather(*workers)
            return {"rps": done / (time.perf_counter() - start), "n": done}

    print(json.dumps(uvloop.run(main())))


async def at_rate(one: object, rate: float, seconds: float) -> dict[str, float]:
    """Open loop: a request every ``1 / rate`` s for ``seconds`` (after 1 s of warm-up at the same rate);
    prints ``measuring`` when the measured window starts and ``done`` when its last request was sent, so the
    parent samples the router's CPU over exactly that window. At most 512 requests are outstanding: beyond,
    arrivals are skipped (counted), as a client that cannot keep up would."""
    latencies: list[float] = []
    tasks: set[asyncio.Task] = set()
    skipped = 0
    warmup = int(rate)
    total = warmup + int(rate * seconds)

    async def timed() -> None:
        latencies.append(await one())  # type: ignore[operator]

    start = time.perf_counter()
    measured_start = 0.0
    for i in range(total):
        if i == warmup:
            await asyncio.gather(*tasks)
            latencies.clear()
            print("measuring", flush=True)
            measured_start = time.perf_counter()
            start = measured_start - i / rate
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= 512:
            skipped += 1
            continue
        task = asyncio.create_task(timed())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - measured_start
    print("done", flush=True)
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "n": len(latencies),
        "skipped": skipped,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def load(url: str, concurrency: int, stream: bool, args: argparse.Namespace, headers: dict[str, str]) -> dict:
    out = subprocess.run(
        load_argv(url, concurrency, stream, args, headers, 0), capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed against {url}: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_argv(
    url: str, concurrency: int, stream: bool, args: argparse.Namespace, headers: dict[str, str], rate: float
) -> list[str]:
    argv = [
        sys.executable,
        __file__,
        "load",
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(args.requests),
        "--seconds",
        str(args.seconds),
        "--headers",
        json.dumps(headers),
        "--rate",
        str(rate),
    ]
    if stream:
        argv.append("--stream")
    return argv


def at_fixed_rate(target: Target, args: argparse.Namespace, lag_of: object = None) -> dict:
    """Non-streaming requests at ``args.rate`` for ``args.seconds``: achieved rate, latency, and the router's
    CPU seconds per request over the measured window (``lag_of()``: the router's event lag histogram)."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            load_argv(target.url, 0, False, args, target.headers, args.rate),
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert proc.stdout is not None
        cpu_before = lag_before = None
        for line in proc.stdout:
            if line.strip() == "measuring":
                cpu_before = tree_cpu_s(target.pid)
                lag_before = lag_of() if lag_of else None  # type: ignore[operator]
            elif line.strip() == "done":
                break
        cpu_after = tree_cpu_s(target.pid)
        lag_after = lag_of() if lag_of else None  # type: ignore[operator]
        out = proc.stdout.read()
        proc.wait(300)
        errors.seek(0)
        if proc.returncode != 0 or cpu_before is None:
            raise RuntimeError(f"load generator failed against {target.url}: {errors.read()[-1500:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_ms_per_request"] = 1000 * (cpu_after - cpu_before) / max(1, result["n"])
    if lag_before is not None and lag_after is not None:
        result.update(lag_summary(lag_before, lag_after))
    return result


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (threads included)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


# --- KV events ----------------------------------------------------------------------------------------


def run_events(nats_url: str, rate: float, seconds: float) -> None:
    """Publish ``rate`` KV events/s (one block each) for ``seconds`` (0: one batch per pod, to seed the block
    sizes) into ``KV_EVENTS``, as the kv-index service does: stores chained on each pod's current sequence,
    and, once a pod holds ``EVENT_POD_BLOCKS``, as many evictions of its oldest blocks."""
    import nats
    import uvloop
    from brixmesh.common.messages import KvBlockRemoved, KvBlockStored, KvEventBatch
    from brixmesh.common.subjects import KV_EVENTS
    from msgspec import msgpack

    encoder = msgpack.Encoder()
    rng = random.Random(3)
    tokens = [[rng.randrange(32000) for _ in range(EVENT_BLOCK_SIZE)] for _ in range(1024)]

    class Pod:
        def __init__(self, index: int) -> None:
            self.name = f"w{index}"
            self.subject = KV_EVENTS.format(model=MODEL, pod=self.name)
            self.held: list[int] = []
            self.oldest = 0
            self.parent: int | None = None
            self.next_hash = index << 40
            self.seq = 0

        def batch(self, events: int) -> bytes:
            out: list[object] = []
            while len(out) < events:
                self.next_hash += 1
                if self.parent is None or self.next_hash % 32 == 0:
                    self.parent = None  # a new sequence every 32 blocks
                out.append(
                    KvBlockStored([self.next_hash], self.parent, rng.choice(tokens), EVENT_BLOCK_SIZE)
                )
                self.parent = self.next_hash
                self.held.append(self.next_hash)
                if len(self.held) - self.oldest > EVENT_POD_BLOCKS and len(out) < events:
                    out.append(KvBlockRemoved([self.held[self.oldest]]))
                    self.oldest += 1
            if self.oldest > EVENT_POD_BLOCKS:
                del self.held[: self.oldest]
                self.oldest = 0
            self.seq += 1
            return encoder.encode(KvEventBatch(self.name, MODEL, self.seq, time.time(), out))

    async def main() -> None:
        nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)
        pods = [Pod(i) for i in range(EVENT_PODS)]
        per_batch = max(1, round(rate * EVENT_BATCH_S / EVENT_PODS))
        ticks = max(1, int(seconds / EVENT_BATCH_S))
        start = time.perf_counter()
        for tick in range(ticks):
            for pod in pods:
                await nc.publish(pod.subject, pod.batch(per_batch))
            delay = start + (tick + 1) * EVENT_BATCH_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await nc.flush()
        await nc.close()
        sent = ticks * EVENT_PODS * per_batch
        print(json.dumps({"events": sent, "events_per_s": sent / (time.perf_counter() - start)}))

    uvloop.run(main())


def run_follower_alone(nats_url: str, rate: float, seconds: float) -> None:
    """The router's KV follower and index in this process, nothing else, while ``rate`` events/s arrive: the
    event path's own CPU and lag, apart from the requests sharing the router's loop (and the host's cores)."""
    import uvloop
    from brixmesh.common.bus import Bus
    from brixmesh.router.kv.follower import IndexFollower
    from brixmesh.router.kv.index import PrefixIndex

    lags: list[float] = []

    async def main() -> dict[str, float]:
        bus = await Bus.connect(nats_url, name="bench-follower")
        follower = IndexFollower(bus, PrefixIndex(), on_lag=lags.append)
        await follower.start()
        with process(events_argv(nats_url, rate, seconds + 3.0)):
            await asyncio.sleep(2.0)
            applied, cpu, started, first = (
                follower.stats.batches_applied, time.process_time(), time.perf_counter(), len(lags)
            )
            await asyncio.sleep(seconds)
            elapsed = time.perf_counter() - started
            window = sorted(lags[first:])
            result = {
                "applied_batches_per_s": (follower.stats.batches_applied - applied) / elapsed,
                "sent_batches_per_s": EVENT_PODS / EVENT_BATCH_S,
                "cpu_cores": (time.process_time() - cpu) / elapsed,
                "lag_p50_ms": 1000 * window[len(window) // 2],
                "lag_p99_ms": 1000 * window[int(0.99 * (len(window) - 1))],
            }
        await follower.stop()
        await bus.close()
        return result

    print(json.dumps(uvloop.run(main())))


def events_argv(nats_url: str, rate: float, seconds: float) -> list[str]:
    return [sys.executable, __file__, "events", "--nats", nats_url, "--rate", str(rate), "--seconds",
            str(seconds)]  # fmt: skip


def follower_state(url: str) -> dict:
    """From the router's metrics: ``brixmesh_kv_event_lag_seconds`` buckets (upper bound -> cumulative count)
    and the batches applied so far, with the time they were read."""
    import httpx

    buckets: dict[float, float] = {}
    applied = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("brixmesh_kv_event_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("brixmesh_kv_batches_applied "):
            applied = float(line.split()[1])
    return {"buckets": buckets, "applied": applied, "at": time.monotonic()}


def chat_prefix_counts(url: str) -> dict[str, float]:
    """How many chat prompts the router tokenized from a cached earlier turn, how many in full, and how many
    it routed from a kept turn before tokenizing them."""
    import httpx

    series = {
        "reuses": "brixmesh_kv_chat_prefix_reuses ",
        "misses": "brixmesh_kv_chat_prefix_misses ",
        "turns_routed": "brixmesh_kv_chat_turns_routed ",
    }
    counts = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for name, prefix in series.items():
            if line.startswith(prefix):
                counts[name] = float(line.split()[1])
    return counts


def lag_summary(before: dict, after: dict) -> dict[str, float]:
    """Over the window: batches applied per second (the publisher sends ``EVENT_PODS / EVENT_BATCH_S``) and
    the p99 lag's bucket bound (ms) from the histogram's difference (inf: past the last bucket)."""
    buckets = after["buckets"].items()
    counts = sorted((bound, count - before["buckets"].get(bound, 0.0)) for bound, count in buckets)
    total = counts[-1][1] if counts else 0.0
    p99 = next((bound for bound, count in counts if count >= 0.99 * total), float("inf")) if total else 0.0
    return {
        "applied_batches_per_s": (after["applied"] - before["applied"]) / (after["at"] - before["at"]),
        "sent_batches_per_s": EVENT_PODS / EVENT_BATCH_S,
        "lag_p99_ms_at_most": 1000 * p99,
    }


def lag_cell(rate: dict) -> str:
    """``<= bound`` when the follower kept up (applied 95% of what was sent or more), else how far behind."""
    if "lag_p99_ms_at_most" not in rate:
        return ""
    if rate["applied_batches_per_s"] < 0.95 * rate["sent_batches_per_s"]:
        return f"behind {rate['applied_batches_per_s']:.0f}/{rate['sent_batches_per_s']:.0f} batches/s"
    return f"<= {rate['lag_p99_ms_at_most']:g} ms"


# --- processes ----------------------------------------------------------------------------------------


def free_port() -> int:
    from brixmesh.common.ports import free_port as pick

    return pick()


@contextlib.contextmanager
def process(
    argv: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen]:
    sink = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        argv,
        stdout=sink,
        stderr=sink,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log:
            sink.close()


def wait_http(url: str, ok: callable = lambda r: r.status_code == 200, timeout_s: float = 60) -> None:  # type: ignore[valid-type]
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if ok(httpx.get(url, timeout=2)):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")


def ensure_peers() -> bool:
    smg, vllm_router = PEERS_VENV / "bin" / "smg", PEERS_VENV / "bin" / "vllm-router"
    if smg.exists() and vllm_router.exists():
        return True
    print(f"installing {' '.join(PEERS)} into {PEERS_VENV} ...", file=sys.stderr)
    try:
        if not (PEERS_VENV / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(PEERS_VENV / "bin" / "pip"), "install", "-q", *PEERS], check=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"peers unavailable ({exc}); measuring brixmesh only", file=sys.stderr)
        return False
    return smg.exists() and vllm_router.exists()


@dataclass
class Target:
    name: str
    url: str
    pid: int = 0
    """The router process (0: none, the backend measured directly)."""
    headers: dict[str, str] = field(default_factory=dict)


def tokenizer_dir() -> str:
    from brixmesh.cli.mesh import bundled_tokenizer_dirs

    found = bundled_tokenizer_dirs(MODEL)
    if not found:
        raise SystemExit(f"router_overhead: no bundled tokenizer for {MODEL} (install brixmesh-engine-sim)")
    return found[MODEL]


@contextlib.contextmanager
def brixmesh_router(workdir: Path, workers: list[str], nats_url: str) -> Iterator[tuple[str, int]]:
    endpoints = workdir / "endpoints.json"
    endpoints.write_text(
        json.dumps([{"name": f"w{i}", "url": u, "model": MODEL} for i, u in enumerate(workers)])
    )
    port = free_port()
    env = {
        "BRIXMESH_NATS_URL": nats_url,
        "BRIXMESH_PORT": str(port),
        "BRIXMESH_ENDPOINTS_FILE": str(endpoints),
        "BRIXMESH_LOG_LEVEL": "warning",
        "BRIXMESH_KV_TOKENIZER_DIRS": json.dumps({MODEL: tokenizer_dir()}),
    }
    with process([sys.executable, "-m", "brixmesh.router"], env, workdir / "router.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz")
        subprocess.run(events_argv(nats_url, EVENT_PODS, 0), check=True, capture_output=True, timeout=60)
        wait_http(f"{url}/metrics", lambda r: "brixmesh_kv_batches_applied " in r.text and _seeded(r.text))
        yield url, proc.pid


def _seeded(metrics: str) -> bool:
    line = next(line for line in metrics.splitlines() if line.startswith("brixmesh_kv_batches_applied "))
    return float(line.split()[1]) >= EVENT_PODS


@contextlib.contextmanager
def smg(workdir: Path, workers: list[str], policy: str) -> Iterator[tuple[str, int]]:
    port, prom = free_port(), free_port()
    argv = [
        str(PEERS_VENV / "bin" / "smg"),
        "launch",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *workers,
        "--policy",
        policy,
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(prom),
    ]
    if policy == "cache_aware":
        argv += [
            "--cache-threshold",
            "0.3",
            "--balance-abs-threshold",
            "64",
            "--balance-rel-threshold",
            "1.5",
        ]
    with process(argv, log=workdir / f"smg-{policy}.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(
            f"{url}/workers", lambda r: r.status_code == 200 and r.text.count("127.0.0.1") >= len(workers)
        )
        wait_http(f"{url}/v1/models")
        yield url, proc.pid


@contextlib.contextmanager
def vllm_router(workdir: Path, workers: list[str], policy: str) -> Iterator[tuple[str, int]]:
    port, prom = free_port(), free_port()
    argv = [
        str(PEERS_VENV / "bin" / "vllm-router"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *workers,
        "--policy",
        policy,
        "--prometheus-port",
        str(prom),
    ]
    with process(argv, log=workdir / f"vllm-router-{policy}.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health")
        yield url, proc.pid


def wanted(name: str, args: argparse.Namespace) -> bool:
    names = [w.strip() for w in args.only.split(",") if w.strip()]
    return name.startswith("direct") or not names or any(name.startswith(w) for w in names)


def measure(target: Target, args: argparse.Namespace) -> dict:
    result = {}
    for stream in (False, True):
        kind = "stream" if stream else "plain"
        result[f"c1_{kind}"] = load(target.url, 1, stream, args, target.headers)
        result[f"c64_{kind}"] = load(target.url, 64, stream, args, target.headers)
    if target.pid:
        result["rate"] = at_fixed_rate(target, args)
    print(f"  {target.name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    backend = sub.add_parser("backend")
    backend.add_argument("--port", type=int, required=True)
    gen = sub.add_parser("load")
    gen.add_argument("--url", required=True)
    gen.add_argument("--concurrency", type=int, required=True)
    gen.add_argument("--stream", action="store_true")
    gen.add_argument("--headers", default="{}")
    for name in ("events", "follow"):
        events = sub.add_parser(name)
        events.add_argument("--nats", required=True)
        events.add_argument("--rate", type=float, required=True)
        events.add_argument("--seconds", type=float, required=True)
    for p in (parser, gen):
        p.add_argument("--requests", type=int, default=2000, help="requests at concurrency 1")
        p.add_argument("--seconds", type=float, default=5.0, help="measured s at c64 and at the rate")
        p.add_argument("--rate", type=float, default=500.0, help="requests/s of the fixed-rate run")
    parser.add_argument("--events", type=float, default=50_000.0, help="KV events/s of the event-lag run")
    parser.add_argument("--quick", action="store_true", help="500 requests at c1, 3 s runs")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating default-vs-smg cache_aware rounds (0: none)"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated target name prefixes to run (direct always runs)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "router_overhead.json")
    args = parser.parse_args()
    if args.command == "backend":
        run_backend(args.port)
        return
    if args.command == "load":
        run_load(
            args.url,
            args.concurrency,
            args.stream,
            args.requests,
            args.seconds,
            json.loads(args.headers),
            args.rate,
        )
        return
    if args.command == "events":
        run_events(args.nats, args.rate, args.seconds)
        return
    if args.command == "follow":
        run_follower_alone(args.nats, args.rate, args.seconds)
        return
    if args.quick:
        args.requests, args.seconds = 500, 3.0
    run_all(args)


def run_all(args: argparse.Namespace) -> None:
    from brixmesh.common.servers import NatsServer

    peers = not args.skip_peers and ensure_peers()
    workdir = Path(tempfile.mkdtemp(prefix="bm-bench-router-"))
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        workers = []
        for i in range(2):
            port = free_port()
            stack.enter_context(
                process(
                    [sys.executable, __file__, "backend", "--port", str(port)],
                    log=workdir / f"backend{i}.log",
                )
            )
            workers.append(f"http://127.0.0.1:{port}")
        for url in workers:
            wait_http(f"{url}/health")
        nats = NatsServer(workdir / "nats").start()
        stack.callback(nats.stop)
        print(f"backends {workers}; results -> {args.out}", file=sys.stderr)
        results["direct"] = measure(Target("direct", workers[0]), args)
        names = [f"brixmesh {name}" for name in STRATEGIES]
        if any(wanted(name, args) for name in names):
            with brixmesh_router(workdir, workers, nats.url) as (url, pid):
                for name, spec in STRATEGIES.items():
                    target = Target(f"brixmesh {name}", url, pid, {"routing-strategy": spec})
                    if wanted(target.name, args):
                        results[target.name] = measure(target, args)
                if peers and args.rounds > 0 and wanted("brixmesh default", args) and wanted("smg cache_aware", args):
                    with smg(workdir, workers, "cache_aware") as (peer_url, peer_pid):
                        results["head to head"] = head_to_head(
                            Target("brixmesh default", url, pid, {"routing-strategy": DEFAULT_STRATEGY}),
                            Target("smg cache_aware", peer_url, peer_pid),
                            args,
                        )
                if wanted("brixmesh default", args):
                    results["brixmesh default + events"] = {
                        "rate": with_events(Target("brixmesh default", url, pid), args, nats.url, workdir)
                    }
                results["brixmesh tokenizer"] = chat_prefix_counts(url)
            if wanted("brixmesh default", args):
                with contextlib.ExitStack() as own:  # an empty stream: nothing to replay first
                    fresh = NatsServer(workdir / "nats-follower").start()
                    own.callback(fresh.stop)
                    results["KV follower alone"] = follower_alone(args, fresh.url)
        if peers:
            for policy in ("round_robin", "cache_aware"):
                for name, launch in ((f"smg {policy}", smg), (f"vllm-router {policy}", vllm_router)):
                    if wanted(name, args):
                        with launch(workdir, workers, policy) as (url, pid):
                            results[name] = measure(Target(name, url, pid), args)
        results["direct (again)"] = measure(Target("direct (again)", workers[0]), args)
    report(results, args)


def head_to_head(ours: Target, peer: Target, args: argparse.Namespace) -> dict:
    """CPU per request at the fixed rate and p50 at concurrency 1 of the default strategy and smg
    ``cache_aware``, alternating ``args.rounds`` times (the order flips every round). The host's speed drifts
    over minutes, so each round compares like with like; the verdicts are the medians over the rounds."""
    rounds = []
    for number in range(args.rounds):
        row: dict[str, float] = {}
        pair = ((("ours", ours), ("peer", peer)) if number % 2 == 0 else (("peer", peer), ("ours", ours)))
        for who, target in pair:
            row[f"{who}_cpu_ms"] = at_fixed_rate(target, args)["cpu_ms_per_request"]
            row[f"{who}_c1_p50_ms"] = load(target.url, 1, False, args, target.headers)["p50_ms"]
        rounds.append(row)
    result = {
        "rounds": rounds,
        "cpu_ratio_median": statistics.median(r["ours_cpu_ms"] / r["peer_cpu_ms"] for r in rounds),
        "c1_p50_difference_ms_median": statistics.median(r["ours_c1_p50_ms"] - r["peer_c1_p50_ms"] for r in rounds),
    }
    print(f"  head to head: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def follower_alone(args: argparse.Namespace, nats_url: str) -> dict[str, float]:
    argv = [sys.executable, __file__, "follow", "--nats", nats_url, "--rate", str(args.events), "--seconds",
            str(args.seconds)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"follower run failed: {out.stderr[-1500:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  KV follower alone: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def with_events(target: Target, args: argparse.Namespace, nats_url: str, workdir: Path) -> dict:
    """The fixed-rate run while ``args.events`` KV events/s arrive (published from 2 s before to after it)."""
    seconds = args.seconds + 5.0
    with process(events_argv(nats_url, args.events, seconds), log=workdir / "events.log"):
        time.sleep(1.0)
        result = at_fixed_rate(target, args, lambda: follower_state(target.url))
    print(f"  {target.name} + events: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    base = {
        kind: (results["direct"][f"c1_{kind}"]["p50_ms"] + results["direct (again)"][f"c1_{kind}"]["p50_ms"])
        / 2
        for kind in ("plain", "stream")
    }
    header = (
        f"{'target':27} {'+p50 ms':>8} {'p99 ms':>8} {'req/s c64':>9} | "
        f"{'+p50 ms':>8} {'p99 ms':>8} {'req/s c64':>9} | "
        f"{'req/s':>6} {'CPU ms/req':>10} {'KV event lag p99':>16}"
    )
    lines = [
        f"{'':27} {'non-streaming':^28} | {'streaming':^28} | at {args.rate:g} req/s offered",
        header,
        "-" * len(header),
    ]
    for name, r in results.items():
        if name in ("brixmesh tokenizer", "KV follower alone", "head to head"):
            continue
        cells = []
        for kind in ("plain", "stream"):
            if f"c1_{kind}" not in r:
                cells.append(" " * 28)
                continue
            c1, c64 = r[f"c1_{kind}"], r[f"c64_{kind}"]
            cells.append(f"{c1['p50_ms'] - base[kind]:>+8.3f} {c1['p99_ms']:>8.3f} {c64['rps']:>9.0f}")
        rate = r.get("rate")
        tail = ""
        if rate:
            lag = lag_cell(rate)
            tail = f"{rate['rps']:>6.0f} {rate['cpu_ms_per_request']:>10.3f} {lag:>16}"
        lines.append(f"{name:27} {cells[0]} | {cells[1]} | {tail}")
    lines.append(
        f"direct p50 (mean of first and last run): {base['plain']:.3f} ms non-streaming, "
        f"{base['stream']:.3f} ms streaming; cores: {os.cpu_count()}"
    )
    alone = results.get("KV follower alone")
    if alone:
        lines.append(
            f"KV follower alone at {args.events:g} events/s: {alone['applied_batches_per_s']:.0f}/"
            f"{alone['sent_batches_per_s']:.0f} batches/s applied, {alone['cpu_cores']:.2f} core, "
            f"lag p50 {alone['lag_p50_ms']:.1f} ms, p99 {alone['lag_p99_ms']:.1f} ms"
        )
    reused = results.get("brixmesh tokenizer")
    if reused:
        lines.append(
            f"brixmesh chat prompts tokenized from a cached earlier turn: {reused.get('reuses', 0):.0f}, "
            f"in full: {reused.get('misses', 0):.0f}; routed from a kept turn before tokenizing: "
            f"{reused.get('turns_routed', 0):.0f}"
        )
    duel = results.get("head to head")
    if duel:
        rounds = duel["rounds"]
        lines.append(
            f"head to head, {len(rounds)} rounds alternating: default's CPU per request "
            f"{duel['cpu_ratio_median']:.2f}x smg cache_aware's (rounds: "
            + ", ".join(f"{r['ours_cpu_ms']:.3f}/{r['peer_cpu_ms']:.3f}" for r in rounds)
            + f"); p50 at c1 default - smg {duel['c1_p50_difference_ms_median']:+.3f} ms (rounds: "
            + ", ".join(f"{r['ours_c1_p50_ms'] - r['peer_c1_p50_ms']:+.3f}" for r in rounds)
            + ")"
        )
    lines.append(headline(results, base, args))
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"ts": time.time(), "direct_p50_ms": base, "results": results}, indent=2)
    )


def headline(results: dict[str, dict], base: dict[str, float], args: argparse.Namespace) -> str:
    ours, smg_cache = results.get("brixmesh default"), results.get("smg cache_aware")
    events = results.get("brixmesh default + events", {}).get("rate", {})
    parts = []
    if ours:
        rate = ours["rate"]
        parts.append(
            f"default: {rate['cpu_ms_per_request']:.3f} CPU ms/req at {rate['rps']:.0f} req/s, "
            f"+p50 {ours['c1_plain']['p50_ms'] - base['plain']:.3f} ms"
        )
    duel = results.get("head to head")
    if duel:
        parts.append(
            f"{duel['cpu_ratio_median']:.2f}x smg cache_aware's CPU and p50 at c1 "
            f"{duel['c1_p50_difference_ms_median']:+.3f} ms from smg's (medians of {len(duel['rounds'])} "
            "alternating rounds)"
        )
    elif ours and smg_cache:
        ratio = ours["rate"]["cpu_ms_per_request"] / smg_cache["rate"]["cpu_ms_per_request"]
        parts.append(
            f"{ratio:.2f}x smg cache_aware's CPU "
            f"(+p50 {smg_cache['c1_plain']['p50_ms'] - base['plain']:.3f} ms)"
        )
    if events:
        parts.append(
            f"with {args.events:g} KV events/s: {events['cpu_ms_per_request']:.3f} CPU ms/req, "
            f"KV event lag p99 {lag_cell(events)}"
        )
    return "headline: " + ("; ".join(parts) if parts else "no brixmesh default run")


if __name__ == "__main__":
    main()
