"""Cost of the simulated KV cache and KV-event publisher on this machine (one core's worth).

1. Block hashing: blocks/s for each ``--prefix-caching-hash-algo``.
2. Block pool: admissions/s for a request of ``--prompt`` tokens plus ``--output`` decode steps
   (lookup, allocation, caching, one ``allocate_slots`` per token, free), with a shared system prompt so
   hits, evictions and events all happen; also per-step cost of one decode allocation.
3. Publisher: batches/s through ``publish()`` + the background thread to a connected SUB.

Usage: ``.venv/bin/python bench/engine_sim_kv_cache.py [--quick]``. Prints one line per figure; exits 0.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import dataclass

import zmq
from brixmesh.engine_sim.hashing import HASH_ALGOS, BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_event_types import BlockRemoved
from brixmesh.engine_sim.kv_events import ZmqKvEventPublisher
from brixmesh.engine_sim.kv_events_config import parse_kv_events_config


@dataclass
class Req:
    request_id: str
    all_token_ids: list[int]
    num_computed_tokens: int = 0
    lora_name: str | None = None
    lora_path: str | None = None
    lora_int_id: int | None = None
    cache_salt: str | None = None
    num_preemptions: int = 0


def bench_hashing(num_blocks: int, block_size: int) -> None:
    rng = random.Random(0)
    tokens = [rng.randrange(32000) for _ in range(num_blocks * block_size)]
    for algo in HASH_ALGOS:
        hasher = BlockHasher(algo, seed="0")  # type: ignore[arg-type]
        start = time.perf_counter()
        hasher.hash_blocks(tokens, block_size)
        elapsed = time.perf_counter() - start
        print(f"hashing {algo:12s} {num_blocks / elapsed:12,.0f} blocks/s  (block {block_size})")


def bench_pool(requests: int, prompt: int, output: int, block_size: int, num_blocks: int) -> None:
    rng = random.Random(1)
    system = [rng.randrange(32000) for _ in range(prompt // 2)]
    mgr = KvCacheManager(num_blocks, block_size, BlockHasher("sha256", seed="0"))
    decode_steps = 0
    decode_time = 0.0
    events = 0
    start = time.perf_counter()
    for i in range(requests):
        tokens = system + [rng.randrange(32000) for _ in range(prompt - len(system))]
        req = Req(f"r{i}", tokens)
        req.num_computed_tokens = mgr.get_computed_blocks(req)
        if not mgr.allocate_slots(req, prompt - req.num_computed_tokens):
            raise SystemExit(f"pool of {num_blocks} blocks cannot hold one request")
        req.num_computed_tokens = prompt
        t0 = time.perf_counter()
        for _ in range(output):
            req.all_token_ids.append(rng.randrange(32000))
            mgr.allocate_slots(req, 1)
            req.num_computed_tokens += 1
        decode_time += time.perf_counter() - t0
        decode_steps += output
        mgr.free(req)
        events += len(mgr.take_events())
    elapsed = time.perf_counter() - start
    print(
        f"pool     {requests / elapsed:12,.0f} requests/s  ({prompt} prompt + {output} output tokens, "
        f"block {block_size}, {num_blocks} blocks, {events / requests:.1f} events/request, "
        f"hit rate {mgr.counters.hits / mgr.counters.queries:.2f})"
    )
    print(f"pool     {decode_time / decode_steps * 1e6:12.2f} us per decode allocate_slots")


def bench_publisher(batches: int, events_per_batch: int) -> None:
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/kv.ipc"
        pub = ZmqKvEventPublisher(
            parse_kv_events_config({"enable_kv_cache_events": True, "endpoint": endpoint}), context=ctx
        )
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(endpoint)
        batch = [BlockRemoved(block_hashes=[i], medium="GPU", group_idx=0) for i in range(events_per_batch)]
        while not sub.poll(50):  # ZMQ slow joiner
            pub.publish(batch)
        while sub.poll(100):
            sub.recv_multipart()
        start = time.perf_counter()
        publish_time = 0.0
        for _ in range(batches):
            t0 = time.perf_counter()
            pub.publish(batch)
            publish_time += time.perf_counter() - t0
        received = 0
        while received < batches and sub.poll(2000):
            sub.recv_multipart()
            received += 1
        elapsed = time.perf_counter() - start
        pub.close()
        sub.close(linger=0)
    ctx.term()
    print(
        f"publish  {received / elapsed:12,.0f} batches/s end to end ({events_per_batch} events/batch, "
        f"{received}/{batches} received); publish() {publish_time / batches * 1e6:.1f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--output", type=int, default=128)
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    bench_hashing(20_000 // scale, 16)
    bench_pool(2_000 // scale, args.prompt, args.output, 16, 4096)
    bench_publisher(20_000 // scale, 8)


if __name__ == "__main__":
    main()
