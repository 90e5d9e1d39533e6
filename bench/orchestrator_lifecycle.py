"""Orchestrator lifecycle timings with the local backend and simulated engines.

Runs a real nats-server and ``brixmesh-orchestrator`` (a subprocess, as in production) and measures, from
the orchestrator's own ``pods.*`` events:

- scale-up: a ``scale.decisions`` message 0 -> N until the first / last pod is ``added`` and ``ready``;
- scale-down of idle pods: decision N -> 0 until every pod is ``removed`` (drain settle + stop);
- drain under load: one 60-token stream (40 ms/token) in flight, decision to drain its pod until ``removed``
  (should be about the stream's remaining time plus the settle window);
- crash restart: SIGKILL of an engine until it is ``ready`` again (backoff + process start).

Usage: ``.venv/bin/python bench/orchestrator_lifecycle.py [--pods 4] [--rounds 3]``. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from brixmesh.common.admin import bearer_header
from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, ScaleDecision
from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS, SCALE_DECISIONS

SLOW_SIM = ["--perf-model", "constant", "--time-to-first-token", "5", "--inter-token-latency", "40"]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[float, PodEvent]] = []
        self.changed = asyncio.Event()

    def on_event(self, _subject: str, event: PodEvent) -> None:
        if event.reason != "re-announce":
            self.seen.append((time.time(), event))
            self.changed.set()

    async def wait(self, kind: str, count: int, since: float, pod: str | None = None, timeout: float = 60) -> list[float]:
        """Arrival times of the first ``count`` ``kind`` events after ``since``."""
        deadline = time.monotonic() + timeout
        while True:
            times = [t for t, e in self.seen if e.kind == kind and t >= since and (pod is None or e.pod.pod == pod)]
            if len(times) >= count:
                return times[:count]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} {kind} events not seen in {timeout}s")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1)


async def decide(bus: Bus, desired: int) -> float:
    now = time.time()
    decision = ScaleDecision(
        deployment="bench", current_replicas=0, desired_replicas=desired, algorithm="bench", reason="bench", ts=now
    )
    await bus.publish(SCALE_DECISIONS.format(deployment="bench"), decision)
    await bus.client.flush()
    return now


async def stream(endpoint: str) -> None:
    body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 60, "stream": True}
    async with httpx.AsyncClient(timeout=30) as client, client.stream("POST", endpoint + "/v1/completions", json=body) as r:
        async for _ in r.aiter_lines():
            pass


async def run(pods: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="bm-orch-bench-") as work:
        nats = NatsServer(Path(work) / "nats").start()
        port = free_port()
        admin_token = secrets.token_urlsafe(32)
        env = {
            **os.environ,
            "BRIXMESH_NATS_URL": nats.url,
            "BRIXMESH_PORT": str(port),
            "BRIXMESH_STATE_DIR": f"{work}/state",
            "BRIXMESH_LOG_LEVEL": "warning",
            "BRIXMESH_ADMIN_TOKEN": admin_token,
            "BRIXMESH_STOP_PODS_ON_EXIT": "1",
        }
        orchestrator = subprocess.Popen([sys.executable, "-m", "brixmesh.orchestrator"], env=env,
                                        start_new_session=True)
        bus = await Bus.connect(nats.url, name="bench")
        events = Events()
        await bus.subscribe(PODS.pattern(), PodEvent, events.on_event)
        api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=10, headers=bearer_header(admin_token)
        )
        try:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await api.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            spec = {"model": "tiny-llama", "replicas": 0, "engine_args": SLOW_SIM, "drain_grace_s": 30}
            (await api.put("/v1/deployments/bench", json=spec)).raise_for_status()
            for _ in range(rounds):
                t0 = await decide(bus, pods)
                added = await events.wait("added", pods, t0)
                ready = await events.wait("ready", pods, t0)
                record("scale-up: decision -> first added", added[0] - t0)
                record("scale-up: decision -> first ready", ready[0] - t0)
                record(f"scale-up: decision -> all {pods} ready", ready[-1] - t0)

                listed = (await api.get("/v1/pods")).json()["data"]
                newest = max(listed, key=lambda p: p["created_at"])
                load = asyncio.create_task(stream(newest["pod"]["endpoint"]))
                await asyncio.sleep(0.3)
                t1 = await decide(bus, pods - 1)
                (removed,) = await events.wait("removed", 1, t1, pod=newest["pod"]["pod"])
                await load
                record("drain with a 2.4 s stream in flight: decision -> removed", removed - t1)

                victim = min(listed, key=lambda p: p["created_at"])
                t2 = time.time()
                os.kill(victim["pid"], signal.SIGKILL)
                (back,) = await events.wait("ready", 1, t2, pod=victim["pod"]["pod"])
                record("crash: SIGKILL -> ready again", back - t2)

                t3 = await decide(bus, 0)
                gone = await events.wait("removed", pods - 1, t3)
                record(f"scale-down of {pods - 1} idle pods: decision -> all removed", gone[-1] - t3)
        finally:
            await api.aclose()
            await bus.close()
            orchestrator.send_signal(signal.SIGTERM)
            orchestrator.wait(30)
            nats.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.pods < 2:
        parser.error("--pods must be >= 2 (one pod is drained under load while another is killed)")
    results = asyncio.run(run(args.pods, args.rounds))
    print(f"orchestrator lifecycle, local backend, engine sim, {os.cpu_count()} CPUs, {args.rounds} rounds")
    print(f"{'measurement':58} {'median s':>9} {'max s':>7}")
    for name, values in results.items():
        print(f"{name:58} {statistics.median(values):9.2f} {max(values):7.2f}")


if __name__ == "__main__":
    main()
