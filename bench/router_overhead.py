"""Router overhead: direct vs brixmesh (random, least-request, prefix-cache) vs the Rust routers ``smg``
(sglang-router) and ``vllm-router`` (round_robin, cache_aware), all in front of the same fast backend.

For each target: p50/p99 latency at concurrency 1 (added latency = target p50 - direct p50) and the most
requests/s at concurrency 64, non-streaming and streaming. The backend is a tiny aiohttp server (two
processes) that answers at once, so what is measured is the router. The load generator runs in its own
process. Prompts come from 64 distinct prefixes so cache-aware policies spread.

    .venv/bin/python bench/router_overhead.py                  # installs the peers into .brixmesh/peers-venv
    .venv/bin/python bench/router_overhead.py --skip-peers --requests 500 --seconds 3

Results: a table on stdout and JSON in ``bench/results/router_overhead.json``. Everything binds 127.0.0.1.
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
MODEL = "bench-model"
PREFIXES = [f"System prompt number {i}: you are a helpful assistant for topic {i}. " * 4 for i in range(64)]


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
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello there, how are you"},
                    "finish_reason": "stop",
                }
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


def run_load(
    url: str, concurrency: int, stream: bool, requests: int, seconds: float, headers: dict[str, str]
) -> None:
    import aiohttp
    import uvloop

    async def main() -> dict[str, float]:
        rng = random.Random(7)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> float:
                body = {
                    "model": MODEL,
                    "stream": stream,
                    "max_tokens": 6,
                    "messages": [
                        {"role": "user", "content": rng.choice(PREFIXES) + f"question {rng.randrange(10**6)}"}
                    ],
                }
                started = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
                    data = await response.read()
                    if response.status != 200 or (stream and not data.endswith(b"data: [DONE]\n\n")):
                        raise RuntimeError(f"{url}: {response.status} {data[:200]!r}")
                return time.perf_counter() - started

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


def load(url: str, concurrency: int, stream: bool, args: argparse.Namespace, headers: dict[str, str]) -> dict:
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
    ]
    if stream:
        argv.append("--stream")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed against {url}: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    headers: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def brixmesh_router(workdir: Path, workers: list[str], nats_url: str) -> Iterator[str]:
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
    }
    with process([sys.executable, "-m", "brixmesh.router"], env, workdir / "router.log"):
        wait_http(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def smg(workdir: Path, workers: list[str], policy: str) -> Iterator[str]:
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
    with process(argv, log=workdir / f"smg-{policy}.log"):
        url = f"http://127.0.0.1:{port}"
        wait_http(
            f"{url}/workers", lambda r: r.status_code == 200 and r.text.count("127.0.0.1") >= len(workers)
        )
        wait_http(f"{url}/v1/models")
        yield url


@contextlib.contextmanager
def vllm_router(workdir: Path, workers: list[str], policy: str) -> Iterator[str]:
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
    with process(argv, log=workdir / f"vllm-router-{policy}.log"):
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health")
        yield url


def measure(target: Target, args: argparse.Namespace) -> dict | None:
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    if wanted and not target.name.startswith("direct") and not any(target.name.startswith(w) for w in wanted):
        return None
    result = {}
    for stream in (False, True):
        kind = "stream" if stream else "plain"
        result[f"c1_{kind}"] = load(target.url, 1, stream, args, target.headers)
        result[f"c64_{kind}"] = load(target.url, 64, stream, args, target.headers)
    print(
        f"  {target.name}: "
        + ", ".join(
            f"{k} "
            + (
                f"p50 {v['p50_ms']:.3f} ms p99 {v['p99_ms']:.3f} ms"
                if "p50_ms" in v
                else f"{v['rps']:.0f} req/s"
            )
            for k, v in result.items()
        ),
        file=sys.stderr,
        flush=True,
    )
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
    for p in (parser, gen):
        p.add_argument("--requests", type=int, default=2000, help="requests at concurrency 1")
        p.add_argument("--seconds", type=float, default=5.0, help="measured seconds at concurrency 64")
    parser.add_argument("--skip-peers", action="store_true")
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
            args.url, args.concurrency, args.stream, args.requests, args.seconds, json.loads(args.headers)
        )
        return
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
        with brixmesh_router(workdir, workers, nats.url) as url:
            for strategy in ("random", "least-request", "prefix-cache"):
                name = f"brixmesh {strategy}"
                results[name] = measure(Target(name, url, {"routing-strategy": strategy}), args)
        if peers:
            for policy in ("round_robin", "cache_aware"):
                with smg(workdir, workers, policy) as url:
                    results[f"smg {policy}"] = measure(Target(f"smg {policy}", url), args)
                with vllm_router(workdir, workers, policy) as url:
                    results[f"vllm-router {policy}"] = measure(Target(f"vllm-router {policy}", url), args)
        results["direct (again)"] = measure(Target("direct (again)", workers[0]), args)
    report({name: r for name, r in results.items() if r is not None}, args.out)


def report(results: dict[str, dict], out: Path) -> None:
    base = {
        kind: (results["direct"][f"c1_{kind}"]["p50_ms"] + results["direct (again)"][f"c1_{kind}"]["p50_ms"])
        / 2
        for kind in ("plain", "stream")
    }
    header = (
        f"{'target':28} {'+p50 ms':>8} {'p99 ms':>8} {'req/s c64':>10} | "
        f"{'+p50 ms':>8} {'p99 ms':>8} {'req/s c64':>10}   (non-streaming | streaming)"
    )
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        cells = []
        for kind in ("plain", "stream"):
            c1, c64 = r[f"c1_{kind}"], r[f"c64_{kind}"]
            cells.append(f"{c1['p50_ms'] - base[kind]:>+8.3f} {c1['p99_ms']:>8.3f} {c64['rps']:>10.0f}")
        lines.append(f"{name:28} {cells[0]} | {cells[1]}")
    lines.append(
        f"direct p50 (mean of first and last run): {base['plain']:.3f} ms non-streaming, "
        f"{base['stream']:.3f} ms streaming; cores: {os.cpu_count()}"
    )
    print("\n".join(lines))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"ts": time.time(), "direct_p50_ms": base, "results": results}, indent=2))


if __name__ == "__main__":
    main()
