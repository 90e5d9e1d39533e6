"""A restarted kv-index process (SIGKILLed, then started again) resumes each engine's stream where it
published last: routers keep their entries (no clear) and converge to the engine's own KV state, including
the steps the engine took while kv-index was down. When the engine restarted meanwhile, the stream starts
afresh."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import zmq.asyncio

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodInfo, PodList, PodListRequest, PodStatus
from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS_LIST
from brixmesh.kv_index.decode import decode_payload
from brixmesh.kv_index.zmq_source import EngineEventSource, SourceConfig
from brixmesh.router.kv.index import PrefixIndex
from tests.engine_sim.sim_engine import SimEngine
from tests.kv.held_blocks import track_held
from tests.kv.test_bridge import POD, PROMPTS, complete, kv_sim, pod_info, router_index
from tests.router.harness import metric_value
from tests.service_proc import ServiceProcess, service_process
from tests.waiting import eventually


async def engine_truth(engine: SimEngine, info: PodInfo) -> set[int]:
    """The blocks the engine holds, from its own replay buffer (every step since it started)."""
    context = zmq.asyncio.Context()
    source = EngineEventSource(
        SourceConfig(info.kv_events_endpoint, info.kv_replay_endpoint, info.kv_events_topic, engine.base_url),
        context,
    )
    try:
        steps = await source.replay(0, 5.0)
    finally:
        source.close()
        context.destroy(linger=0)
    assert steps is not None and steps[0][0] == 0  # the buffer still reaches back to the start
    held: dict[int, int] = {}
    for _seq, payload in steps:
        track_held(held, decode_payload(payload).events)
    return set(held)


@contextlib.asynccontextmanager
async def orchestrator_listing(nats: NatsServer, info: PodInfo) -> AsyncIterator[None]:
    """Answers ``pods.list`` with the one pod, as the orchestrator would (no lease: it never expires)."""
    bus = await Bus.connect(nats.url, name="orchestrator")
    status = PodStatus(pod=info, phase="ready", ready=True, created_at=0.0, phase_since=0.0)
    await bus.serve(PODS_LIST.template, PodListRequest, lambda _s, _r: PodList(pods=[status], ts=time.time()))
    try:
        yield
    finally:
        await bus.close()


def kv_index(nats: NatsServer, log: Path) -> contextlib.AbstractAsyncContextManager[ServiceProcess]:
    return service_process("brixmesh.kv_index", nats.url, log, {"BRIXMESH_KV_SNAPSHOT_INTERVAL_S": "1"})


async def _resumed(client: httpx.AsyncClient, kv: ServiceProcess) -> float:
    return metric_value((await client.get(f"{kv.url}/metrics")).text, "brixmesh_kv_bridge_resumed_total")


async def _converged(index: PrefixIndex, engine: SimEngine, info: PodInfo) -> bool:
    truth = await engine_truth(engine, info)
    return bool(truth) and index.engine_hashes(POD) == truth


async def test_a_restarted_kv_index_resumes_and_routers_keep_their_entries(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    events, replay = f"ipc://{tmp_path}/ev.ipc", f"tcp://127.0.0.1:{free_port()}"
    with kv_sim(events, replay) as engine:
        info = pod_info(engine.base_url, events, replay)
        async with (
            orchestrator_listing(fresh_nats_server, info),
            router_index(fresh_nats_server) as router,
            httpx.AsyncClient(timeout=10) as client,
        ):  # fmt: skip
            async with kv_index(fresh_nats_server, tmp_path / "kv-1.log") as first:
                await complete(engine, PROMPTS[0])
                await eventually(lambda: _converged(router.index, engine, info))
                await complete(engine, f"more {PROMPTS[0]}")
                await eventually(lambda: _converged(router.index, engine, info))
                assert await _resumed(client, first) == 0
                os.kill(first.process.pid, signal.SIGKILL)
            clears = router.index.counters.clears
            held = router.index.engine_hashes(POD)
            await complete(engine, PROMPTS[1])  # steps nobody bridges: the next kv-index must replay them
            assert not await _converged(router.index, engine, info)
            async with kv_index(fresh_nats_server, tmp_path / "kv-2.log") as second:
                await eventually(lambda: _converged(router.index, engine, info))
                assert await _resumed(client, second) == 1
                assert router.index.counters.clears == clears  # entries kept throughout
                assert router.index.engine_hashes(POD) >= held


async def test_an_engine_restarted_while_kv_index_was_down_starts_a_fresh_stream(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    events, replay = f"ipc://{tmp_path}/ev.ipc", f"tcp://127.0.0.1:{free_port()}"
    async with router_index(fresh_nats_server) as router, httpx.AsyncClient(timeout=10) as client:
        with kv_sim(events, replay) as engine:
            info = pod_info(engine.base_url, events, replay)
            async with (
                orchestrator_listing(fresh_nats_server, info),
                kv_index(fresh_nats_server, tmp_path / "kv-1.log") as first,
            ):  # fmt: skip
                for turn in range(3):
                    await complete(engine, f"{turn} {PROMPTS[0]}")
                await eventually(lambda: _converged(router.index, engine, info))
                os.kill(first.process.pid, signal.SIGKILL)
        clears = router.index.counters.clears
        with kv_sim(events, replay) as engine:  # same pod, new engine: its steps count from 0 again
            info = pod_info(engine.base_url, events, replay)
            await complete(engine, PROMPTS[1])
            async with (
                orchestrator_listing(fresh_nats_server, info),
                kv_index(fresh_nats_server, tmp_path / "kv-2.log") as second,
            ):  # fmt: skip
                await eventually(lambda: _converged(router.index, engine, info))
                assert await _resumed(client, second) == 0
                assert router.index.counters.clears == clears + 1
