"""Which HTTP client should the router use upstream? Same backend, same loop (uvloop), sequential POSTs over
keep-alive: p50 latency and client CPU per request for httpx, aiohttp and the router's own httptools client.

    .venv/bin/python bench/router_http_clients.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import uvloop

from brixmesh.common.ports import free_port
from brixmesh.router.upstream import UpstreamPool

BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":6}'


async def measure(name: str, one: Callable[[], Awaitable[bytes]], n: int) -> None:
    for _ in range(200):
        await one()
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        started = time.perf_counter()
        await one()
        latencies.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    print(
        f"{name:24} p50 {1000 * statistics.median(latencies):.3f} ms   client CPU {1e6 * cpu / n:.0f} us/request"
    )


async def main(url: str, n: int) -> None:
    async with httpx.AsyncClient() as client:

        async def via_httpx() -> bytes:
            return (
                await client.post(
                    url + "/v1/chat/completions", content=BODY, headers={"content-type": "application/json"}
                )
            ).content

        await measure("httpx 0.28", via_httpx, n)
    async with aiohttp.ClientSession() as session:

        async def via_aiohttp() -> bytes:
            async with session.post(
                url + "/v1/chat/completions", data=BODY, headers={"content-type": "application/json"}
            ) as response:
                return await response.read()

        await measure("aiohttp 3.14", via_aiohttp, n)
    pool = UpstreamPool(3, 60)

    async def via_pool() -> bytes:
        response = await pool.post(url, "/v1/chat/completions", BODY)
        try:
            return await response.read()
        finally:
            response.close()

    await measure("brixmesh httptools pool", via_pool, n)
    pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    port = free_port()
    backend = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("router_overhead.py")), "backend", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)
        uvloop.run(main(f"http://127.0.0.1:{port}", args.requests))
    finally:
        backend.terminate()
        backend.wait()
