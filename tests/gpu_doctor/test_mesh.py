"""The gpu-doctor against real processes: nats-server, the orchestrator with simulated engines, a router.
Faults come from the doctor's simulated source (``POST /admin/faults``) and the simulator's own fault
injection (engine symptoms)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from brixmesh.common.messages import GPU_LABEL
from brixmesh.common.servers import NatsServer
from tests.gpu_doctor.mesh import NODE, run_mesh
from tests.service_proc import ADMIN_HEADERS
from tests.waiting import eventually


async def stream_through(router_url: str, max_tokens: int) -> tuple[str, int, str | None]:
    """A streamed completion through the router: (pod that served it, tokens received, finish reason)."""
    body = {"model": "tiny-llama", "prompt": "a long story", "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens, finish = 0, None
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{router_url}/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        pod = response.headers["x-brixmesh-pod"]
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
        streams = [asyncio.create_task(stream_through(mesh.router.url, 60)) for _ in range(4)]
        victim = pods[0]
        gpu = mesh.gpu_of(victim)
        await asyncio.sleep(0.5)  # the streams are admitted and generating
        await mesh.inject({"gpu": gpu, "signal": "xid", "value": 48})

        decision = await mesh.decisions.wait_for(action="replace_pod", signal="xid")
        assert (decision.node, decision.gpu, decision.pods, decision.severity) == (NODE, gpu, [victim], "critical")
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
        assert replacement.labels[GPU_LABEL] != gpu
        await mesh.wait_routed_to({replacement.pod})
        cordons = (await mesh.orchestrator.http.get("/v1/cordons")).json()["data"]
        assert [(c["node"], c["gpu"]) for c in cordons] == [(NODE, gpu)]
        assert "Xid 48" in cordons[0]["reason"]
