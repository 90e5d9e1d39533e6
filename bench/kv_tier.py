"""KV tier (``brixmesh-kv-tier``) on this machine.

1. Throughput: batched put and get (``get_into`` a preallocated buffer) of 32 blocks of 128 KiB, 512 KiB
   and 2 MiB between two processes over loopback, against a plain loopback TCP copy of the same bytes
   measured in the same run (blocking sockets, ``sendall`` / ``recv_into`` a preallocated buffer: the most
   Python moves over a socket), best of several alternating runs. Target: the tier >= 70 % of the plain
   copy.
2. Latency: p50 / p99 of one 32-block get.
3. Eviction: S3-FIFO vs LRU hit ratio (the tier's own policy classes) on a trace with scans and on a
   multi-turn trace (each turn reads its conversation's prefix blocks, then writes its new ones).
4. Fleet: simulated engines (qwen-7b on an A10 profile, GPU caches too small for the working set)
   serving multi-turn conversations, each turn sent to a random engine, with the tier on vs off:
   throughput and TTFT p90. Also the measured weight of a tier block against a GPU block for routing:
   ``1 - fetch time / prefill time`` per block.

Usage: ``.venv/bin/python bench/kv_tier.py [--quick]`` (quick: < 10 min). The last line is the headline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import uvloop

from brixmesh.common.kv_tier import KvTierClient, TierNamespace
from brixmesh.common.ports import free_port
from brixmesh.engine_sim.timing import GPU_PROFILES, MODEL_PROFILES, RooflineModel, StepShape
from brixmesh.kv_index.tier.eviction import EvictionPolicy, Lru, S3Fifo

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "services/engine-sim/src/brixmesh/engine_sim/assets/tiny-llama"
BATCH = 32
SIZES = (128 << 10, 512 << 10, 2 << 20)
NS = TierNamespace("bench", "bfloat16", 16)
_BASE = struct.Struct("<cQ")


# --- servers (run as child processes of this script) -------------------------------------------------------


def serve_tier(port: int, memory_mb: int, policy: str) -> None:
    from brixmesh.kv_index.tier.server import TierCore, serve
    from brixmesh.kv_index.tier.store import SlabStore

    async def main() -> None:
        store = SlabStore(memory_mb << 20, S3Fifo if policy == "s3fifo" else Lru, preallocate=True)
        core = TierCore(store, 16 << 20, 1 << 30)
        await serve(core, "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_plain(port: int, memory_mb: int) -> None:
    """The plain copy: ``P`` + length: receive that many bytes into a buffer, answer one byte; ``G`` +
    length: send that many bytes from a buffer. Successive batches use successive parts of a buffer as
    large as the data set, as a store's blocks are (re-sending one cache-hot batch would flatter it)."""
    listener = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    buffer = bytearray(memory_mb << 20)
    buffer[::4096] = bytes(len(range(0, len(buffer), 4096)))
    view = memoryview(buffer)
    header = bytearray(_BASE.size)
    while True:
        connection, _ = listener.accept()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with connection:
            copy_plain(connection, header, view)


def copy_plain(connection: socket.socket, header: bytearray, view: memoryview) -> None:
    cursor = 0
    while True:
        if connection.recv_into(header, _BASE.size, socket.MSG_WAITALL) < _BASE.size:
            return
        op, length = _BASE.unpack(header)
        if cursor + length > view.nbytes:
            cursor = 0
        part = view[cursor : cursor + length]
        cursor += length
        if op == b"P":
            received = 0
            while received < length:
                received += connection.recv_into(part[received:])
            connection.sendall(b"k")
        else:
            connection.sendall(part)


def child(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


# --- 1 + 2: throughput and latency -----------------------------------------------------------------------


def plain_copy(port: int, size: int, batches: int) -> tuple[float, float]:
    """(put GB/s, get GB/s) of the plain copy."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = memoryview(bytes(BATCH * size))
    sink = memoryview(bytearray(BATCH * size))
    length = BATCH * size
    start = time.perf_counter()
    for _ in range(batches):
        sock.sendall(_BASE.pack(b"P", length))
        sock.sendall(payload)
        sock.recv(1)
    put = batches * length / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    for _ in range(batches):
        sock.sendall(_BASE.pack(b"G", length))
        received = 0
        while received < length:
            received += sock.recv_into(sink[received:])
    get = batches * length / (time.perf_counter() - start) / 1e9
    sock.close()
    return put, get


async def tier_copy(
    address: str, size: int, batches: int, latency_gets: int, round_: int
) -> tuple[float, float, list[float]]:
    """(put GB/s, get GB/s, per-get seconds of ``latency_gets`` random 32-block gets)."""
    client = KvTierClient([address], timeout_s=30.0)
    values = [memoryview(bytes([i]) * size) for i in range(BATCH)]
    sink = memoryview(bytearray(BATCH * size))
    buffers = [sink[i * size : (i + 1) * size] for i in range(BATCH)]
    base = (size * 1000 + round_) << 20
    start = time.perf_counter()
    for batch in range(batches):
        keys = list(range(base + batch * BATCH, base + (batch + 1) * BATCH))
        reply = await client.put(NS, keys, values)
        assert reply.stored == BATCH, reply
    put = batches * BATCH * size / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    for batch in range(batches):
        keys = list(range(base + batch * BATCH, base + (batch + 1) * BATCH))
        assert await client.get_into(NS, keys, buffers) == [size] * BATCH
    get = batches * BATCH * size / (time.perf_counter() - start) / 1e9
    rng = random.Random(size)
    times = []
    for _ in range(latency_gets):
        first = rng.randrange(batches * BATCH - BATCH)
        began = time.perf_counter()
        await client.get_into(NS, list(range(base + first, base + first + BATCH)), buffers)
        times.append(time.perf_counter() - began)
    await client.close()
    return put, get, times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bench_throughput(total_mb: int, latency_gets: int, rounds: int) -> dict[int, dict[str, float]]:
    """Each figure is the best of ``rounds`` alternating runs of the plain copy and the tier: on a shared
    machine the best run is the one least disturbed by others."""
    results: dict[int, dict[str, float]] = {}
    print("\n| block | plain put GB/s | tier put GB/s | put % | plain get GB/s | tier get GB/s | get % "
          "| 32-block get p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in SIZES:
        batches = max(4, (total_mb << 20) // (BATCH * size))
        plain_port, tier_port = free_port(), free_port()
        memory_mb = (batches * BATCH * size >> 20) + 64
        plain = child("--serve-plain", str(plain_port), str(memory_mb))
        tier = child("--serve-tier", str(tier_port), str(memory_mb), "lru")
        plain_put = plain_get = tier_put = tier_get = 0.0
        times: list[float] = []
        try:
            for round_ in range(rounds):
                put, get = plain_copy(plain_port, size, batches)
                plain_put, plain_get = max(plain_put, put), max(plain_get, get)
                put, get, latencies = uvloop.run(
                    tier_copy(f"127.0.0.1:{tier_port}", size, batches, latency_gets // rounds, round_)
                )
                tier_put, tier_get = max(tier_put, put), max(tier_get, get)
                times += latencies
        finally:
            for process in (plain, tier):
                process.kill()
                process.wait()
        row = {
            "plain_put": plain_put, "tier_put": tier_put, "plain_get": plain_get, "tier_get": tier_get,
            "p50_ms": percentile(times, 0.5) * 1e3, "p99_ms": percentile(times, 0.99) * 1e3,
        }  # fmt: skip
        results[size] = row
        print(f"| {size >> 10} KiB | {plain_put:.2f} | {tier_put:.2f} | {100 * tier_put / plain_put:.0f} % "
              f"| {plain_get:.2f} | {tier_get:.2f} | {100 * tier_get / plain_get:.0f} % "
              f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |", flush=True)
    return results


# --- 3: eviction policies ---------------------------------------------------------------------------------


class CountCache:
    """A cache of ``capacity`` keys under a policy (what the tier's store does per size class)."""

    def __init__(self, capacity: int, policy: EvictionPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self.held: set[object] = set()
        self.hits = self.lookups = 0

    def read(self, key: object) -> bool:
        self.lookups += 1
        if key in self.held:
            self.hits += 1
            self.policy.hit(key)
            return True
        return False

    def write(self, key: object) -> None:
        if key in self.held:
            return
        if len(self.held) >= self.capacity:
            self.held.discard(self.policy.victim())
        self.held.add(key)
        self.policy.insert(key)


def scan_trace(length: int, hot_keys: int, seed: int) -> Iterator[int]:
    """Zipf-like reads of a hot set, interrupted by one-time sequential scans (new keys each time)."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 0.8 for rank in range(hot_keys)]
    next_cold = 1 << 40
    emitted = 0
    while emitted < length:
        for key in rng.choices(range(hot_keys), weights, k=2000):
            yield key
        for _ in range(hot_keys // 2):
            next_cold += 1
            yield next_cold
        emitted += 2000 + hot_keys // 2


def run_reads(trace: Iterator[int], capacity: int, policy: EvictionPolicy) -> float:
    cache = CountCache(capacity, policy)
    for key in trace:
        if not cache.read(key):
            cache.write(key)
    return cache.hits / cache.lookups


def run_multi_turn(conversations: int, turns: int, capacity: int, policy: EvictionPolicy, seed: int) -> float:
    """Conversations interleaved at random; a turn reads its prefix blocks in order (stopping at the first
    miss, as a longest-prefix load does) and writes its new blocks. 1 in 4 conversations is a one-shot
    document (a long prompt never asked again), the scans of real traffic."""
    rng = random.Random(seed)
    cache = CountCache(capacity, policy)
    state: dict[int, list[tuple[int, int]]] = {}
    active = list(range(conversations))
    progress = {c: 0 for c in active}
    while active:
        conversation = rng.choice(active)
        blocks = state.setdefault(conversation, [])
        for key in blocks:
            if not cache.read(key):
                break
        new = rng.randint(60, 120) if conversation % 4 == 3 else rng.randint(3, 8)
        for _ in range(new):
            key = (conversation, len(blocks))
            blocks.append(key)
            cache.write(key)
        progress[conversation] += 1
        if conversation % 4 == 3 or progress[conversation] >= turns:
            active.remove(conversation)
    return cache.hits / max(cache.lookups, 1)


def bench_eviction(scale: int) -> dict[str, tuple[float, float]]:
    rows: dict[str, tuple[float, float]] = {}
    for capacity in (500, 1000):
        trace = lambda: scan_trace(200_000 // scale, 1500, 7)  # noqa: E731
        rows[f"scans, cache {capacity} of a 1500-key hot set"] = (
            run_reads(trace(), capacity, S3Fifo()), run_reads(trace(), capacity, Lru()),
        )  # fmt: skip
    for capacity in (2000, 4000):
        rows[f"multi-turn, cache {capacity} blocks"] = (
            run_multi_turn(4000 // scale, 12, capacity, S3Fifo(), 3),
            run_multi_turn(4000 // scale, 12, capacity, Lru(), 3),
        )
    print("\n| trace | S3-FIFO hit ratio | LRU hit ratio |")
    print("|---|---|---|")
    for name, (s3, lru) in rows.items():
        print(f"| {name} | {s3:.3f} | {lru:.3f} |")
    return rows


# --- 4: simulated fleet -----------------------------------------------------------------------------------

FLEET_GPU = "a10"
FLEET_MODEL = "qwen-7b"
FLEET_BLOCK = 16
LINK_SPEEDUP = 4.0


def start_engines(
    replicas: int, gpu_blocks: int, tier: str | None, time_scale: float
) -> tuple[subprocess.Popen[str], list[str]]:
    argv = [
        sys.executable, "-m", "brixmesh.engine_sim", "serve", str(ASSETS), "--host", "127.0.0.1",
        "--port", "0", "--served-model-name", "bench", "--replicas", str(replicas), "--gpu", FLEET_GPU,
        "--model-profile", FLEET_MODEL, "--block-size", str(FLEET_BLOCK), "--max-model-len", "4096",
        "--num-gpu-blocks-override", str(gpu_blocks), "--enable-prefix-caching",
        "--time-scale", str(time_scale),
    ]  # fmt: skip
    if tier:
        extra = {"tier_nodes": [tier], "lookup_timeout_ms": 500, "load_timeout_ms": 5000}
        config = {"kv_connector": "BrixTierConnector", "kv_role": "kv_both",
                  "kv_connector_extra_config": extra}  # fmt: skip
        argv += ["--kv-transfer-config", json.dumps(config)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    urls = [engine["url"] for engine in json.loads(process.stdout.readline())["engines"]]
    deadline = time.monotonic() + 30
    while True:
        try:
            if all(httpx.get(f"{url}/health").status_code == 200 for url in urls):
                return process, urls
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("simulated engines did not start")
        time.sleep(0.1)


async def run_fleet_workload(
    urls: list[str], conversations: int, turns: int, concurrency: int, seed: int
) -> tuple[float, list[float], int]:
    """(requests/s, TTFTs in s, prompt tokens) of multi-turn conversations, each turn to a random engine."""
    rng = random.Random(seed)
    system = [rng.randrange(100, 2000) for _ in range(1024)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for conversation in range(conversations):
        queue.put_nowait(conversation)
    ttfts: list[float] = []
    prompt_tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal prompt_tokens
        while not queue.empty():
            conversation = queue.get_nowait()
            local = random.Random(seed * 1000 + conversation)
            prompt = system + [local.randrange(100, 2000) for _ in range(256)]
            for _ in range(turns):
                body = {"model": "bench", "prompt": prompt, "max_tokens": 32, "ignore_eos": True,
                        "stream": True}  # fmt: skip
                began = time.perf_counter()
                first = None
                async with client.stream("POST", f"{rng.choice(urls)}/v1/completions", json=body) as response:
                    if response.status_code != 200:
                        answer = await response.aread()
                        raise RuntimeError(f"engine answered {response.status_code}: {answer!r}")
                    async for _chunk in response.aiter_bytes():
                        if first is None:
                            first = time.perf_counter() - began
                ttfts.append(first or 0.0)
                prompt_tokens += len(prompt)
                prompt = prompt + [local.randrange(100, 2000) for _ in range(32 + 128)]

    async with httpx.AsyncClient(timeout=120.0) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return conversations * turns / elapsed, ttfts, prompt_tokens


def bench_fleet(quick: bool, link_speedup: float) -> dict[tuple[str, float], dict[str, float]]:
    """Tier off vs on, each at time scale 1 (the tier's transfers as fast as this machine moves bytes from
    one Python process to another) and at ``link_speedup`` (simulated time runs that much slower than
    wall time, so the same real transfers count as a link that much faster; engine time is unchanged).
    Figures are in simulated time."""
    replicas, conversations, turns, concurrency = (4, 24, 4, 8) if quick else (4, 48, 6, 12)
    gpu_blocks = 400  # 6400 tokens per engine: three or four conversations' contexts
    results: dict[tuple[str, float], dict[str, float]] = {}
    for scale in (1.0, link_speedup):
        for mode in ("off", "on"):
            tier_process = None
            tier_address = None
            if mode == "on":
                port = free_port()
                tier_process = child("--serve-tier", str(port), "4096", "s3fifo")
                tier_address = f"127.0.0.1:{port}"
            engines, urls = start_engines(replicas, gpu_blocks, tier_address, scale)
            try:
                workload = run_fleet_workload(urls, conversations, turns, concurrency, 11)
                rate, ttfts, _tokens = asyncio.run(workload)
            finally:
                engines.terminate()
                engines.wait()
                if tier_process is not None:
                    tier_process.kill()
                    tier_process.wait()
            results[(mode, scale)] = {
                "rate": rate * scale, "ttft_p50": percentile(ttfts, 0.5) / scale,
                "ttft_p90": percentile(ttfts, 0.9) / scale,
            }  # fmt: skip
    print(f"\nFleet: {replicas} simulated engines ({FLEET_MODEL} on {FLEET_GPU}, {gpu_blocks} GPU blocks of "
          f"{FLEET_BLOCK} tokens each), {conversations} conversations x {turns} turns (1024-token shared "
          f"system prompt, 256 own tokens, +160 per turn), {concurrency} at a time, each turn to a random "
          "engine")
    print("\n| tier | tier link vs this machine's loopback | requests/s | TTFT p50 ms | TTFT p90 ms |")
    print("|---|---|---|---|---|")
    for (mode, scale), row in results.items():
        print(f"| {mode} | {scale:g}x | {row['rate']:.2f} | {row['ttft_p50'] * 1e3:.0f} "
              f"| {row['ttft_p90'] * 1e3:.0f} |")
    return results


RDMA_BYTES_PER_S = 12.5e9
"""A 100 Gb/s RDMA NIC at line rate: a modelled column, not measured (no RDMA here)."""


def tier_block_weights(fetch_s: float) -> list[tuple[str, float, list[float]]]:
    """(gpu, prefill ms per block, weights) for the fleet's model: a tier block saves a block's prefill but
    costs its fetch, so against a GPU block (which saves all of it) it is worth ``1 - fetch / prefill``;
    weights for the measured fetch, one ``LINK_SPEEDUP`` times faster, and an RDMA NIC's."""
    model = MODEL_PROFILES[FLEET_MODEL]
    fetches = (fetch_s, fetch_s / LINK_SPEEDUP, model.kv_bytes_per_token * FLEET_BLOCK / RDMA_BYTES_PER_S)
    rows = []
    for gpu in ("h100", "a100", FLEET_GPU):
        roofline = RooflineModel(GPU_PROFILES[gpu], model)
        prefill = roofline.step_seconds(StepShape([(2048, 0)], [])) / (2048 / FLEET_BLOCK)
        rows.append((gpu, prefill * 1e3, [max(0.0, 1 - fetch / prefill) for fetch in fetches]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (under 10 minutes)")
    parser.add_argument(
        "--serve-tier", nargs=3, metavar=("PORT", "MEMORY_MB", "POLICY"), help=argparse.SUPPRESS
    )
    parser.add_argument("--serve-plain", nargs=2, metavar=("PORT", "MEMORY_MB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_tier:
        serve_tier(int(args.serve_tier[0]), int(args.serve_tier[1]), args.serve_tier[2])
        return
    if args.serve_plain:
        serve_plain(int(args.serve_plain[0]), int(args.serve_plain[1]))
        return
    began = time.monotonic()
    throughput = bench_throughput(*((96, 100, 5) if args.quick else (256, 400, 7)))
    eviction = bench_eviction(4 if args.quick else 1)
    fleet = bench_fleet(args.quick, LINK_SPEEDUP)
    block_bytes = MODEL_PROFILES[FLEET_MODEL].kv_bytes_per_token * FLEET_BLOCK
    nearest = min(SIZES, key=lambda size: abs(size - block_bytes))
    fetch_s = throughput[nearest]["p50_ms"] / 1e3 / BATCH / nearest * block_bytes
    print(f"\nRouting weight of a tier block against a GPU block, 1 - fetch/prefill ({FLEET_MODEL}, "
          f"{block_bytes >> 10} KiB blocks; measured fetch {fetch_s * 1e3:.2f} ms per block, from the "
          f"{nearest >> 10} KiB 32-block get p50 scaled by bytes):")
    print(f"\n| GPU profile | prefill ms per block | measured fetch | {LINK_SPEEDUP:g}x link "
          f"| 100 Gb/s RDMA (modelled) |")
    print("|---|---|---|---|---|")
    for gpu, prefill_ms, weights in tier_block_weights(fetch_s):
        print(f"| {gpu} | {prefill_ms:.2f} | " + " | ".join(f"{weight:.2f}" for weight in weights) + " |")
    worst_put = min(row["tier_put"] / row["plain_put"] for row in throughput.values())
    worst_get = min(row["tier_get"] / row["plain_get"] for row in throughput.values())
    p99 = {size >> 10: row["p99_ms"] for size, row in throughput.items()}
    scans = [s3 - lru for name, (s3, lru) in eviction.items() if name.startswith("scans")]
    turns_gain = [s3 - lru for name, (s3, lru) in eviction.items() if name.startswith("multi")]
    off, on = fleet[("off", LINK_SPEEDUP)], fleet[("on", LINK_SPEEDUP)]
    off_1, on_1 = fleet[("off", 1.0)], fleet[("on", 1.0)]
    print(f"\n(bench took {time.monotonic() - began:.0f} s)")
    print(
        f"HEADLINE kv-tier: put >= {100 * worst_put:.0f}% / get >= {100 * worst_get:.0f}% of plain loopback "
        "TCP; "
        f"32-block get p99 {', '.join(f'{k} KiB {v:.1f} ms' for k, v in p99.items())}; "
        f"S3-FIFO-LRU hit ratio scans {min(scans):+.3f}..{max(scans):+.3f}, multi-turn "
        f"{min(turns_gain):+.3f}..{max(turns_gain):+.3f}; fleet tier on vs off: loopback-speed link "
        f"{on_1['rate'] / off_1['rate']:.2f}x req/s, TTFT p90 {on_1['ttft_p90'] * 1e3:.0f} vs "
        f"{off_1['ttft_p90'] * 1e3:.0f} ms; {LINK_SPEEDUP:g}x link {on['rate'] / off['rate']:.2f}x req/s, "
        f"TTFT p90 {on['ttft_p90'] * 1e3:.0f} vs {off['ttft_p90'] * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
