"""Full stack with processes: two simulated engines, ``python -m brixmesh.kv_index``, and routers
(``python -m brixmesh.router`` with ``kv-aware``), pods announced on ``pods.*``.

Follow-up chat turns land on the engine that served the first turn; the admin endpoint says which pods hold
a prompt; a router started later rebuilds the same index from JetStream (snapshot + replay) before it is
ready and makes the same decisions; a removed pod's entries disappear everywhere; the router's index of each pod equals the engine's own cache
(the read-only routes bench/chaos.py compares), and router and kv-index list the pods they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodInfo
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS
from tests.engine_sim.sim_engine import ASSETS, BLOCK_SIZE, MODEL_NAME, sim_engine
from tests.router.harness import router_process
from tests.service_proc import ADMIN_HEADERS, ServiceProcess, consecutive_free_ports, service_process
from tests.waiting import eventually

SYSTEM = "You answer questions about a fleet of storage servers. " + " ".join(f"Fact {i}: disks fail." for i in range(10))


def kv_index_process(
    nats_url: str, log_path: Path, snapshot_interval_s: float
) -> AbstractAsyncContextManager[ServiceProcess]:
    settings = {"BRIXMESH_KV_SNAPSHOT_INTERVAL_S": str(snapshot_interval_s)}
    return service_process("brixmesh.kv_index", nats_url, log_path, settings)


def router(nats_url: str) -> contextlib.AbstractContextManager:
    return router_process(nats_url, default_strategy="kv-aware", kv_tokenizer_dirs={MODEL_NAME: str(ASSETS)})


async def announce(bus: Bus, kind: str, infos: list[PodInfo]) -> None:
    for info in infos:
        await bus.publish(PODS.format(kind=kind, deployment=info.deployment, pod=info.pod),
                          PodEvent(kind=kind, pod=info, ts=time.time()))  # fmt: skip
    await bus.client.flush()


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_kv_aware_routing_through_the_mesh(fresh_nats_server: NatsServer) -> None:
    with tempfile.TemporaryDirectory(prefix="bm-kvm-") as short:
        events, replay_port = f"ipc://{short}/kv.ipc", consecutive_free_ports(2)
        config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": events,
                  "replay_endpoint": f"tcp://127.0.0.1:{replay_port}", "topic": "kv-events"}  # fmt: skip
        with sim_engine(extra_args=("--kv-events-config", json.dumps(config)), replicas=2) as sim:
            infos = [
                PodInfo(pod=f"engine-{i}", deployment="tiny", model=MODEL_NAME, engine="sim", endpoint=url,
                        kv_events_endpoint=f"{events}-{i}" if i else events, kv_replay_endpoint=f"tcp://127.0.0.1:{replay_port + i}",
                        kv_events_topic="kv-events", block_size=BLOCK_SIZE)
                for i, url in enumerate(sim.urls)
            ]  # fmt: skip
            bus = await Bus.connect(fresh_nats_server.url, name="orchestrator")
            try:
                async with kv_index_process(fresh_nats_server.url, Path(short) / "kv-index.log",
                                            snapshot_interval_s=1.0) as kv_index:  # fmt: skip
                    await announce(bus, "ready", infos)
                    with router(fresh_nats_server.url) as first:
                        await announce(bus, "ready", infos)  # the router learns pods from pods.* events
                        homes = await _check_routing(first.url, infos)
                        await eventually(lambda: _index_is_engine_truth(first.url, infos))
                        for url in (first.url, kv_index.url):
                            listed = httpx.get(f"{url}/admin/pods", headers=ADMIN_HEADERS).json()["pods"]
                            assert listed == [info.pod for info in infos], (url, listed)
                        await asyncio.sleep(2.5)  # at least one snapshot per pod, and history purged behind it
                        with router(fresh_nats_server.url) as second:
                            metrics = httpx.get(f"{second.url}/metrics").text
                            assert metrics.count("brixmesh_kv_index_ready 1.0") == 1
                            assert metric(metrics, "brixmesh_kv_batches_applied") + metric(
                                metrics, "brixmesh_kv_batches_skipped") >= 1  # fmt: skip
                            for prompt in _prompts():
                                assert await _lookup(second.url, prompt) == await _lookup(first.url, prompt)
                        bridge_metrics = httpx.get(f"{kv_index.url}/metrics").text
                        assert metric(bridge_metrics, "brixmesh_kv_bridge_snapshots_total") >= 2
                        assert metric(bridge_metrics, "brixmesh_kv_bridge_bad_payloads_total") == 0

                        gone = homes[0]
                        await announce(bus, "removed", [info for info in infos if info.pod == gone])
                        deadline = time.monotonic() + 10
                        while await _holders(first.url) & {gone}:
                            assert time.monotonic() < deadline
                            await asyncio.sleep(0.1)
                        assert await _holders(first.url) == set(homes) - {gone}  # the other pod keeps its entries
            finally:
                await bus.close()


async def _index_is_engine_truth(router_url: str, infos: list[PodInfo]) -> bool:
    """Every pod's GPU blocks in the router's index are the engine's cached blocks (and some are cached)."""
    cached = 0
    async with httpx.AsyncClient(headers=ADMIN_HEADERS) as client:
        for info in infos:
            engine = (await client.get(f"{info.endpoint}/admin/kv/blocks")).json()["hashes"]
            indexed = await client.get(f"{router_url}/admin/kv/pods/{info.pod}")
            held = indexed.json()["media"].get("GPU", []) if indexed.status_code == 200 else []
            if held != engine:
                return False
            cached += len(engine)
    return cached > 0


def _prompts() -> list[list[dict[str, str]]]:
    return [
        [{"role": "system", "content": f"{SYSTEM} Site: {site}."}, {"role": "user", "content": f"What broke in {site}?"}]
        for site in ("Lisbon", "Osaka", "Quito", "Perth")
    ]


async def _lookup(url: str, messages: list[dict[str, str]]) -> list[dict[str, object]]:
    async with httpx.AsyncClient(headers=ADMIN_HEADERS) as client:
        response = await client.post(f"{url}/admin/kv/lookup", json={"model": MODEL_NAME, "messages": messages})
    assert response.status_code == 200, response.text
    return response.json()["pods"]


async def _holders(url: str) -> set[str]:
    found = set()
    for prompt in _prompts():
        found |= {str(p["pod"]) for p in await _lookup(url, prompt)}
    return found


async def _check_routing(url: str, infos: list[PodInfo]) -> list[str]:
    """Four conversations, six follow-ups each; returns the pod each conversation lives on. Once enough turns
    have reused their kept earlier turn, follow-ups are routed from it before they are tokenized (the default)
    and still land on their conversation's pod."""
    async with httpx.AsyncClient(timeout=30) as client:

        async def chat(messages: list[dict[str, str]]) -> tuple[str, str]:
            response = await client.post(f"{url}/v1/chat/completions",
                                         json={"model": MODEL_NAME, "messages": messages, "max_tokens": 4})  # fmt: skip
            assert response.status_code == 200, response.text
            return response.headers["x-brixmesh-pod"], response.json()["choices"][0]["message"]["content"]

        conversations = _prompts()
        homes = []
        for messages in conversations:
            pod, answer = await chat(messages)
            homes.append(pod)
            messages.append({"role": "assistant", "content": answer})
        for turn in range(6):
            for home, messages in zip(homes, conversations):
                messages.append({"role": "user", "content": f"Tell me more ({turn})."})
                pod, answer = await chat(messages)
                assert pod == home, (turn, home, pod)
                messages.append({"role": "assistant", "content": answer})
        for home, messages in zip(homes, conversations):
            found = await _lookup(url, messages[:2])
            assert found and found[0]["pod"] == home and found[0]["blocks"] >= 2, (
                found, httpx.get(f"{url}/admin/kv/pods", headers=ADMIN_HEADERS).json())
    assert {info.pod for info in infos} >= set(homes)
    assert metric(httpx.get(f"{url}/metrics").text, "brixmesh_kv_chat_turns_routed") > 0

    response = httpx.post(f"{url}/admin/kv/lookup", json={"model": MODEL_NAME}, headers=ADMIN_HEADERS)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    return homes


pytestmark = pytest.mark.timeout(120)
