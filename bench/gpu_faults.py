"""GPU faults on a simulated fleet under load: how fast the gpu-doctor takes a sick engine out of service.

Runs a real nats-server, ``brixmesh-orchestrator`` (simulated engines on GPUs of one node), a router and a
``brixmesh-gpu-doctor`` (simulated GPU telemetry + engine symptoms), with clients sending completions
through the router all along. Then:

1. a steady run without faults (10 minutes; ``--quick``: 2): every decision other than ``observe`` is a
   false positive (target 0);
2. one fault of each class on a serving pod, one after the other, each once the fleet is whole again:
   time from injection to the doctor's decision (detected), to the pod's ``draining`` event (drained, the
   moment routers stop sending it requests) and to a new pod ``ready`` (replaced); and the requests that
   failed meanwhile.

Catalogue hold times are scaled by ``--hold-scale`` (default 0.1: hardware slowdown acts after 3 s, not 30).
Usage: ``.venv/bin/python bench/gpu_faults.py [--quick]``. The headline figures are the last line.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from brixmesh.common.admin import bearer_header
from brixmesh.common.bus import Bus
from brixmesh.common.messages import GPU_INDEX_LABEL, GpuDecision, PodEvent
from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import GPU_DECISIONS, PODS

NODE = "bench-node"
SIM = ["--perf-model", "constant", "--time-to-first-token", "5", "--inter-token-latency", "20"]
REPLICAS = 4
BASELINE_S = 15.0
"""A pod serves this long under load before its step time is slowed (its baseline is measured first)."""

# (name, expected action, doctor fault or None, engine fault or None); a fault needs load on its pod to show
FAULTS: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = [
    ("xid 48 double-bit ECC", "replace_pod", {"signal": "xid", "value": 48}, None),
    ("xid 94 contained ECC", "restart_engine", {"signal": "xid", "value": 94}, None),
    ("uncorrected ECC count", "replace_pod", {"signal": "ecc_uncorrected", "value": 2}, None),
    ("NVLink recovery error", "replace_pod", {"signal": "nvlink_recovery"}, None),
    ("hw slowdown (held)", "replace_pod", {"signal": "throttle_hw", "for_s": 30}, None),
    ("health probe hang", "restart_engine", None, {"hang": True}),
    ("canary output change", "replace_pod", None, {"corrupt_output": True}),
    ("step time 3x", "replace_pod", None, {"slowdown": 3.0}),
    ("xid 79 off the bus", "cordon_node", {"signal": "xid", "value": 79}, None),
]


@dataclass
class Observed:
    events: list[tuple[float, PodEvent]] = field(default_factory=list)
    decisions: list[tuple[float, GpuDecision]] = field(default_factory=list)

    def on_event(self, _subject: str, event: PodEvent) -> None:
        if event.reason != "re-announce":
            self.events.append((time.time(), event))

    def on_decision(self, _subject: str, decision: GpuDecision) -> None:
        if not decision.resent:
            self.decisions.append((time.time(), decision))

    def ready_pods(self) -> dict[str, tuple[float, PodEvent]]:
        """Pods ready now, with when they became ready."""
        state: dict[str, tuple[float, PodEvent]] = {}
        for t, event in self.events:
            if event.kind == "ready":
                state.setdefault(event.pod.pod, (t, event))
            else:
                state.pop(event.pod.pod, None)
        return state

    async def first(self, what: str, since: float, timeout_s: float, match: Any) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [t for t, item in (self.decisions if what == "decision" else self.events)
                     if t >= since and match(item)]  # fmt: skip
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {what} within {timeout_s:.0f} s")


@dataclass
class Load:
    router_url: str
    sent: int = 0
    failed: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self) -> None:
        body = {"model": "tiny-llama", "prompt": "the weather today", "max_tokens": 24}
        async with httpx.AsyncClient(timeout=30) as http:
            while not self.stop.is_set():
                self.sent += 1
                try:
                    ok = (await http.post(f"{self.router_url}/v1/completions", json=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if not ok:
                    self.failed.append(time.time())
                    await asyncio.sleep(0.1)

    def failed_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.failed)


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


async def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(600):
            if process.poll() is not None:
                raise SystemExit(f"{log.stem} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{log.stem} not ready: {log.read_text()[-2000:]}")


async def run(steady_s: float, hold_scale: float, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bm-gpu-faults-") as work_dir:
        work = Path(work_dir)
        nats = NatsServer(work / "nats").start()
        token = secrets.token_urlsafe(32)
        admin = bearer_header(token)
        base = {**os.environ, "BRIXMESH_NATS_URL": nats.url, "BRIXMESH_LOG_LEVEL": "warning",
                "BRIXMESH_ADMIN_TOKEN": token, "BRIXMESH_NODE_NAME": NODE}  # fmt: skip
        ports = {name: free_port() for name in ("orchestrator", "router", "gpu-doctor")}
        settings = {
            "orchestrator": {"BRIXMESH_STATE_DIR": str(work / "state"), "BRIXMESH_STOP_PODS_ON_EXIT": "1",
                             "BRIXMESH_LOCAL_GPUS": "16", "BRIXMESH_RECONCILE_INTERVAL_S": "0.5",
                             "BRIXMESH_DRAIN_POLL_INTERVAL_S": "0.1", "BRIXMESH_ANNOUNCE_INTERVAL_S": "2"},
            "router": {},
            "gpu-doctor": {"BRIXMESH_DOCTOR_SOURCES": "sim,engine", "BRIXMESH_POLL_INTERVAL_S": "0.5",
                           "BRIXMESH_HOLD_SCALE": str(hold_scale), "BRIXMESH_CANARY_INTERVAL_S": "2"},
        }  # fmt: skip
        processes: dict[str, subprocess.Popen[bytes]] = {}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        bus = await Bus.connect(nats.url, name="bench")
        seen = Observed()
        await bus.subscribe(PODS.pattern(), PodEvent, seen.on_event)
        await bus.subscribe(GPU_DECISIONS.pattern(), GpuDecision, seen.on_decision)
        http = httpx.AsyncClient(timeout=10)
        load = Load(urls["router"])
        clients_running: list[asyncio.Task[None]] = []
        try:
            for name in ("orchestrator", "router", "gpu-doctor"):
                env = {**base, "BRIXMESH_PORT": str(ports[name]), **settings[name]}
                log = work / f"{name}.log"
                processes[name] = spawn(f"brixmesh.{name.replace('-', '_')}", env, log)
                await wait_ready(urls[name], processes[name], log)
            spec = {"model": "tiny-llama", "engine": "sim", "replicas": REPLICAS, "engine_args": SIM,
                    "drain_grace_s": 15}
            deployments = f"{urls['orchestrator']}/v1/deployments/bench"
            (await http.put(deployments, json=spec, headers=admin)).raise_for_status()
            await whole(seen, time.time(), timeout_s=120)
            await asyncio.sleep(3)  # routers learned the pods; engines measured their baselines
            clients_running = [asyncio.create_task(load.client()) for _ in range(clients)]

            steady_start = time.time()
            await asyncio.sleep(steady_s)
            steady_end = time.time()
            during = [d for t, d in seen.decisions if steady_start <= t <= steady_end]
            false_positives = [d for d in during if d.action != "observe"]
            steady = {
                "seconds": steady_end - steady_start, "false_positives": len(false_positives),
                "observe": len(during) - len(false_positives), "sent": load.sent,
                "failed": load.failed_between(steady_start, steady_end),
            }  # fmt: skip

            results = []
            touched: set[str] = set()
            for name, expected, doctor_fault, engine_fault in FAULTS:
                results.append(await one_fault(
                    name, expected, doctor_fault, engine_fault, seen, load, http, urls, admin, touched
                ))  # fmt: skip
                if expected == "cordon_node":
                    await http.delete(f"{urls['orchestrator']}/v1/cordons/{NODE}", headers=admin)
        finally:
            load.stop.set()
            await asyncio.gather(*clients_running, return_exceptions=True)
            await http.aclose()
            await bus.close()
            for name in ("gpu-doctor", "router", "orchestrator"):
                process = processes.get(name)
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(40)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
            nats.stop()
        return {"steady": steady, "faults": results, "sent": load.sent, "failed": len(load.failed)}


async def whole(seen: Observed, since: float, timeout_s: float) -> float:
    """When the fleet has ``REPLICAS`` ready pods again."""
    deadline = time.monotonic() + timeout_s
    while len(seen.ready_pods()) < REPLICAS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fleet not whole again within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
    return max([t for t, e in seen.events if e.kind == "ready"] + [since])


async def one_fault(
    name: str, expected: str, doctor_fault: dict[str, Any] | None, engine_fault: dict[str, Any] | None,
    seen: Observed, load: Load, http: httpx.AsyncClient, urls: dict[str, str], admin: dict[str, str],
    touched: set[str],
) -> dict[str, Any]:
    # the longest-serving pod on a GPU no earlier fault touched: the policy judges each GPU by its history
    # (a restart within the cooldown escalates to a replacement), and each fault here is measured alone
    ready = sorted(seen.ready_pods().values(), key=lambda item: item[0])
    fresh = [item for item in ready if item[1].pod.labels[GPU_INDEX_LABEL] not in touched]
    ready_at, event = (fresh or ready)[0]
    victim = event.pod
    touched.add(victim.labels[GPU_INDEX_LABEL])
    if engine_fault is not None and "slowdown" in engine_fault:
        # step time is judged against the pod's own baseline, measured over its first busy seconds
        await asyncio.sleep(max(0.0, ready_at + BASELINE_S - time.time()))
    gpu = victim.labels[GPU_INDEX_LABEL]
    injected = time.time()
    if doctor_fault is not None:
        body = [{"gpu": gpu, **doctor_fault}]
        (await http.post(f"{urls['gpu-doctor']}/admin/faults", json=body, headers=admin)).raise_for_status()
    if engine_fault is not None:
        (await http.post(f"{victim.endpoint}/admin/faults", json=engine_fault)).raise_for_status()
    result: dict[str, Any] = {"fault": name, "expected": expected, "pod": victim.pod}
    try:
        detected = await seen.first(
            "decision", injected, 60, lambda d: victim.pod in d.pods and d.action != "observe"
        )
        action = next(d.action for t, d in seen.decisions if t == detected and victim.pod in d.pods)
        drained = await seen.first(
            "event", injected, 30, lambda e: e.pod.pod == victim.pod and e.kind == "draining"
        )
        if expected == "cordon_node":  # nothing is placed until the cordon is lifted: replacement not timed
            replaced = None
            await seen.first("event", injected, 60, lambda e: e.pod.pod == victim.pod and e.kind == "removed")
        else:
            replaced = await whole(seen, injected, timeout_s=90)
        end = time.time()
        result.update(action=action, detected_s=detected - injected, drained_s=drained - injected,
                      replaced_s=None if replaced is None else replaced - injected,
                      failed=load.failed_between(injected, end))  # fmt: skip
    except TimeoutError as exc:
        result.update(action="missed", error=str(exc), failed=load.failed_between(injected, time.time()))
    return result


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2-minute steady run instead of 10 minutes")
    parser.add_argument("--steady-s", type=float, help="length of the steady run (overrides --quick)")
    parser.add_argument("--hold-scale", type=float, default=0.1)
    parser.add_argument("--clients", type=int, default=6)
    args = parser.parse_args()
    steady_s = args.steady_s if args.steady_s is not None else 120.0 if args.quick else 600.0
    report = asyncio.run(run(steady_s, args.hold_scale, args.clients))
    steady, faults = report["steady"], report["faults"]
    print(f"gpu faults, simulated fleet of {REPLICAS} engines on {os.cpu_count()} CPUs, "
          f"{args.clients} clients, hold scale {args.hold_scale:g}")
    print(f"steady run {steady['seconds']:.0f} s: {steady['false_positives']} false positives, "
          f"{steady['observe']} observe decisions, {steady['failed']} of {steady['sent']} requests failed")
    print(f"{'fault':24} {'expected':15} {'action':15} {'detected s':>10} {'drained s':>9} "
          f"{'replaced s':>10} {'failed':>6}")
    for r in faults:
        print(f"{r['fault']:24} {r['expected']:15} {r['action']:15} {fmt(r.get('detected_s')):>10} "
              f"{fmt(r.get('drained_s')):>9} {fmt(r.get('replaced_s')):>10} {r['failed']:>6}")
    timed = [r for r in faults if r["action"] != "missed"]
    right = sum(r["action"] == r["expected"] for r in faults)

    def median(key: str) -> str:
        values = [r[key] for r in timed if r.get(key) is not None]
        return fmt(statistics.median(values)) if values else "-"

    print(f"headline: {right}/{len(faults)} faults got their action; median detected "
          f"{median('detected_s')} s, drained {median('drained_s')} s, replaced {median('replaced_s')} s; "
          f"{sum(r['failed'] for r in faults)} requests failed under faults, "
          f"{report['failed']} of {report['sent']} overall; "
          f"{steady['false_positives']} false positives in {steady['seconds']:.0f} s steady")
    missed = right < len(faults) or steady["false_positives"] > 0
    raise SystemExit(1 if missed else 0)


if __name__ == "__main__":
    main()
