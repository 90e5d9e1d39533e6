"""The gpu-doctor against real processes: nats-server, the orchestrator with simulated engines, a router.
Faults come from the doctor's simulated source (``POST /admin/faults``) and the simulator's own fault
injection (engine symptoms)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from brixmesh.common.messages import GPU_INDEX_LABEL
from brixmesh.common.servers import NatsServer
from tests.gpu_doctor.mesh import NODE, run_mesh
from tests.waiting import eventually


async def stream_through(
    router_url: str, max_tokens: int, started: asyncio.Queue[str]
) -> tuple[str, int, str | None]:
    """A streamed completion through the router: (pod that served it, tokens received, finish reason); the
    pod goes into ``started`` as soon as the response begins."""
    body = {"model": "tiny-llama", "prompt": "a long story", "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens, finish = 0, None
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{router_url}/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        pod = response.headers["x-brixmesh-pod"]
        started.put_nowait(pod)
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk["choices"]:
                    finish = choice.get("finish_reason") or finish
    return pod, tokens, finish


async def test_gpu_fault_drains_the_pod_in_flight_requests_finish_and_a_replacement_serves(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    async with run_mesh(fresh_nats_server.url, tmp_path) as mesh:
        pods = await mesh.deploy(2)
        await mesh.wait_routed_to(set(pods))
        started: asyncio.Queue[str] = asyncio.Queue()
        streams = [asyncio.create_task(stream_through(mesh.router.url, 60, started)) for _ in range(4)]
        victim = await asyncio.wait_for(started.get(), 10)  # a pod with a stream in flight
        gpu = mesh.gpu_of(victim)
        await mesh.inject({"gpu": gpu, "signal": "xid", "value": 48})

        decision = await mesh.decisions.wait_for(action="replace_pod", signal="xid")
        assert (decision.node, decision.gpu, decision.pods) == (NODE, gpu, [victim])
        assert decision.severity == "critical"
        assert "Xid 48" in decision.reason and decision.evidence["source"] == "sim"
        await mesh.events.wait_for("draining", pod=victim, timeout=10)

        # new requests never reach it, from the moment it drains
        for _ in range(8):
            response = await mesh.complete()
            assert response.status_code == 200 and response.headers["x-brixmesh-pod"] != victim

        # requests in flight on it finish
        finished = await asyncio.gather(*streams)
        assert all(tokens == 60 and finish == "length" for _, tokens, finish in finished), finished
        assert victim in {pod for pod, _, _ in finished}

        # it is replaced on another GPU (its own is cordoned) and the replacement serves
        await mesh.events.wait_for("removed", pod=victim, timeout=40)
        ready = await mesh.events.wait_for("ready", count=3, timeout=60)
        replacement = ready[2].pod
        assert replacement.labels[GPU_INDEX_LABEL] != gpu
        await mesh.wait_routed_to({replacement.pod})
        cordons = (await mesh.orchestrator.http.get("/v1/cordons")).json()["data"]
        assert [(c["node"], c["gpu"]) for c in cordons] == [(NODE, gpu)]
        assert "Xid 48" in cordons[0]["reason"]


async def load(endpoint: str, stop: asyncio.Event) -> None:
    """Steady requests straight to one engine, so that its step times are measured."""
    body = {"model": "tiny-llama", "prompt": "keep busy", "max_tokens": 16}
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            await asyncio.gather(*(client.post(f"{endpoint}/v1/completions", json=body) for _ in range(2)),
                                 return_exceptions=True)


async def test_engine_symptoms_lead_to_their_actions(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    async with run_mesh(fresh_nats_server.url, tmp_path) as mesh:
        slow, corrupt = await mesh.deploy(2)

        # step time regressing against the pod's own baseline: replace
        stop = asyncio.Event()
        busy = asyncio.create_task(load(mesh.endpoint_of(slow), stop))
        try:
            await asyncio.sleep(3)  # the baseline: two intervals of steady steps
            await mesh.engine_fault(slow, slowdown=3.0)
            decision = await mesh.decisions.wait_for(signal="step_time_regression", action="replace_pod")
        finally:
            stop.set()
            await busy
        assert decision.pods == [slow] and decision.value >= 2.0
        assert float(decision.evidence["itl_ms"]) >= 2 * float(decision.evidence["baseline_itl_ms"])
        await mesh.events.wait_for("draining", pod=slow, timeout=10)

        # a canary prompt at temperature 0 answered differently: replace
        await mesh.engine_fault(corrupt, corrupt_output=True)
        decision = await mesh.decisions.wait_for(signal="canary_mismatch", action="replace_pod")
        assert decision.pods == [corrupt] and decision.evidence["expected"] != decision.evidence["got"]
        await mesh.events.wait_for("draining", pod=corrupt, timeout=10)

        # health probes failing: restart the engine
        ready = await mesh.events.wait_for("ready", count=4, timeout=60)
        hung = ready[2].pod.pod
        await mesh.engine_fault(hung, hang=True)
        decision = await mesh.decisions.wait_for(signal="probe_failures", action="restart_engine")
        assert decision.pods == [hung] and "timeout" in decision.evidence["error"].lower()
        await mesh.events.wait_for("draining", pod=hung, timeout=10)
        await mesh.events.wait_for("ready", count=5, timeout=60)


async def test_a_flapping_fault_replaces_once_and_a_lost_gpu_cordons_the_node(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    async with run_mesh(fresh_nats_server.url, tmp_path, gpus=2) as mesh:
        [first] = await mesh.deploy(1)
        gpu = mesh.gpu_of(first)
        # Xid 95 every second for 8 s, and hardware slowdown flapping faster than its 3 s hold
        await mesh.inject(
            {"gpu": gpu, "signal": "xid", "value": 95, "every_s": 1, "times": 8},
            {"gpu": gpu, "signal": "throttle_hw", "for_s": 1, "every_s": 2, "times": 4},
        )
        await mesh.decisions.wait_for(action="replace_pod", signal="xid")
        await mesh.events.wait_for("removed", pod=first, timeout=40)
        [_, second] = await mesh.events.wait_for("ready", count=2, timeout=60)
        await eventually(lambda: len([d for d in mesh.decisions.first() if d.signal == "xid"]) >= 8, 90)
        taken = [d for d in mesh.decisions.first() if d.action != "observe"]
        assert [(d.signal, d.action, d.pods) for d in taken] == [("xid", "replace_pod", [first])]
        held = [d for d in mesh.decisions.first() if d.signal == "xid" and d.action == "observe"]
        assert len(held) == 7 and all("held back" in d.reason for d in held)
        assert not mesh.events.matching("draining", second.pod.pod)

        # the replacement's GPU falls off the bus: its pod drains, nothing new is placed on the node
        other = second.pod.labels[GPU_INDEX_LABEL]
        assert other != gpu
        await mesh.inject({"gpu": other, "signal": "xid", "value": 79})
        decision = await mesh.decisions.wait_for(action="cordon_node")
        assert (decision.pods, decision.severity) == ([second.pod.pod], "fatal")
        await mesh.events.wait_for("removed", pod=second.pod.pod, timeout=40)

        async def unschedulable() -> bool:
            deployment = (await mesh.orchestrator.http.get("/v1/deployments/chat")).json()
            return "cordoned" in (deployment["error"] or "")

        await eventually(unschedulable, 20)
        assert len(mesh.events.matching("ready", where=lambda e: e.reason != "re-announce")) == 2
        # an operator lifts the cordons once the node is fixed: a pod is placed again
        lifted = await mesh.orchestrator.http.delete(f"/v1/cordons/{NODE}")
        assert lifted.status_code == 200 and len(lifted.json()["data"]) == 2
        await mesh.events.wait_for("ready", count=3, timeout=60)
        missing = await mesh.orchestrator.http.delete(f"/v1/cordons/{NODE}")
        assert missing.status_code == 404
        unauthorized = await mesh.http.delete(f"{mesh.orchestrator.url}/v1/cordons/{NODE}")
        assert unauthorized.status_code == 401
