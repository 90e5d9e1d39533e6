"""kv-index bridge against the engine simulator's ZMQ events and a real nats-server, with the router's
index rebuilt from JetStream: equality with the engine's blocks, gaps, engine and router restarts, bad
payloads."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import zmq

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodInfo
from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.kv_index.discovery import PodFollower
from brixmesh.router.kv.follower import IndexFollower
from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.tokenizer import LocalTokenizer
from tests import waiting
from tests.engine_sim.sim_engine import ASSETS, BLOCK_SIZE, MODEL_NAME, SimEngine, sim_engine

POD = "sim-0"
PROMPTS = [
    " ".join(f"alpha{i} beta{i} gamma" for i in range(40)),
    " ".join(f"delta{i} epsilon{i} zeta" for i in range(40)),
]
LONG_PROMPT = " ".join(f"word{i} is{i % 7}" for i in range(150))  # 964 tokens: 30 blocks of 32


@contextlib.contextmanager
def kv_sim(events: str, replay: str, extra: tuple[str, ...] = ()) -> Iterator[SimEngine]:
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": events,
              "replay_endpoint": replay, "topic": "kv-events"}  # fmt: skip
    with sim_engine(extra_args=("--kv-events-config", json.dumps(config), *extra)) as engine:
        yield engine


@pytest.fixture
def endpoints() -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="bm-kv-") as short:  # ipc paths must stay short
        yield f"ipc://{short}/events.ipc", f"tcp://127.0.0.1:{free_port()}"


def pod_info(engine_url: str, events: str, replay: str) -> PodInfo:
    return PodInfo(pod=POD, deployment="d", model=MODEL_NAME, engine="sim", endpoint=engine_url,
                   kv_events_endpoint=events, kv_replay_endpoint=replay, kv_events_topic="kv-events",
                   block_size=BLOCK_SIZE)  # fmt: skip


@contextlib.asynccontextmanager
async def bridge(nats: NatsServer, snapshot_interval_s: float = 3600.0) -> AsyncIterator[PodFollower]:
    from brixmesh.common.kv_streams import events_stream, snapshots_stream

    bus = await Bus.connect(nats.url, name="kv-index")
    await bus.ensure_stream(events_stream())
    await bus.ensure_stream(snapshots_stream())
    follower = PodFollower(
        bus.jetstream,
        max_payload=lambda: bus.client.max_payload,
        replay_timeout_s=1.0,
        snapshot_interval_s=snapshot_interval_s,
    )
    _followers[:] = [follower]
    try:
        yield follower
    finally:
        await follower.close()
        await bus.close()


@contextlib.asynccontextmanager
async def router_index(nats: NatsServer) -> AsyncIterator[IndexFollower]:
    bus = await Bus.connect(nats.url, name="router")
    follower = IndexFollower(bus, PrefixIndex())
    await follower.start()
    try:
        assert await follower.wait_ready(10.0)
        yield follower
    finally:
        await follower.stop()
        await bus.close()


async def complete(engine: SimEngine, prompt: str, max_tokens: int = 4) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{engine.base_url}/v1/completions",
                                     json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens})  # fmt: skip
        assert response.status_code == 200, response.text


_followers: list[PodFollower] = []


def _describe() -> str:
    return "; ".join(repr(f.stats) for f in _followers)


eventually = functools.partial(waiting.eventually, describe=_describe)


def in_sync(follower: PodFollower, index: PrefixIndex) -> Callable[[], bool]:
    def check() -> bool:
        stream = follower.stream(POD)
        return stream is not None and len(stream.blocks) > 0 and index.engine_hashes(POD) == stream.blocks.engine_hashes()

    return check


def prompt_blocks(index: PrefixIndex, prompt: str) -> dict[str, int]:
    tokens = LocalTokenizer(ASSETS).encode_prompt(prompt)
    hashes = index.prompt_hashes(tokens, BLOCK_SIZE, MODEL_NAME, None)
    return {pod: match.blocks for pod, match in index.match(hashes, BLOCK_SIZE).items()}


async def test_events_reach_router_index_and_a_restarted_router_rebuilds_it(
    fresh_nats_server: NatsServer, endpoints: tuple[str, str]
) -> None:
    events, replay = endpoints
    with kv_sim(events, replay) as engine:
        async with bridge(fresh_nats_server) as follower, router_index(fresh_nats_server) as router:
            await follower.follow(pod_info(engine.base_url, events, replay))
            await complete(engine, PROMPTS[0])
            await eventually(lambda: prompt_blocks(router.index, PROMPTS[0]).get(POD, 0) >= 2)
            await eventually(in_sync(follower, router.index))
            assert POD not in prompt_blocks(router.index, PROMPTS[1])

            stream = follower.stream(POD)
            assert stream is not None
            await stream.snapshot()
            await complete(engine, PROMPTS[1])
            await eventually(in_sync(follower, router.index))

            async with router_index(fresh_nats_server) as restarted:
                assert restarted.stats.snapshots_loaded == 1
                assert restarted.index.engine_hashes(POD) == router.index.engine_hashes(POD)
                for prompt in PROMPTS:
                    assert prompt_blocks(restarted.index, prompt) == prompt_blocks(router.index, prompt)


async def test_gaps_are_replayed(fresh_nats_server: NatsServer, endpoints: tuple[str, str]) -> None:
    events, replay = endpoints
    with kv_sim(events, replay, ("--fault-kv-events-drop", "0.4")) as engine:
        async with bridge(fresh_nats_server) as follower, router_index(fresh_nats_server) as router:
            await follower.follow(pod_info(engine.base_url, events, replay))
            for i in range(12):
                await complete(engine, f"turn {i} {PROMPTS[i % 2]}", max_tokens=8)
            await eventually(lambda: follower.stats.gaps > 0, 3)
            await eventually(in_sync(follower, router.index))
            assert follower.stats.replayed > 0 and follower.stats.unrecovered == 0


async def test_engine_restart_drops_its_entries_and_rebuilds_from_new_events(
    fresh_nats_server: NatsServer, endpoints: tuple[str, str]
) -> None:
    events, replay = endpoints
    async with bridge(fresh_nats_server) as follower, router_index(fresh_nats_server) as router:
        with kv_sim(events, replay) as engine:
            await follower.follow(pod_info(engine.base_url, events, replay))
            for _ in range(3):
                await complete(engine, PROMPTS[0])
            await eventually(lambda: prompt_blocks(router.index, PROMPTS[0]).get(POD, 0) >= 2)
            await eventually(in_sync(follower, router.index))
        with kv_sim(events, replay) as engine:
            turn = 0
            while follower.stats.restarts == 0:  # until our socket has reconnected to the new engine
                assert turn < 50, _describe()
                await complete(engine, f"{turn} {PROMPTS[1]}")
                turn += 1
                await asyncio.sleep(0.1)
            await complete(engine, PROMPTS[1])
            await eventually(lambda: prompt_blocks(router.index, PROMPTS[1]).get(POD, 0) >= 2)
            await eventually(in_sync(follower, router.index))
            assert POD not in prompt_blocks(router.index, PROMPTS[0])


async def test_bad_payloads_are_counted_and_skipped(fresh_nats_server: NatsServer, endpoints: tuple[str, str]) -> None:
    events, _ = endpoints
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.bind(events)
    good = msgspec.msgpack.encode([time.time(), [{"type": "BlockStored", "block_hashes": [7], "parent_block_hash": None,
                                                  "token_ids": list(range(BLOCK_SIZE)), "block_size": BLOCK_SIZE,
                                                  "lora_id": None, "medium": "GPU", "lora_name": None}], 0])  # fmt: skip
    try:
        async with bridge(fresh_nats_server) as follower, router_index(fresh_nats_server) as router:
            await follower.follow(pod_info("http://127.0.0.1:1", events, ""))
            messages = [
                [b"kv-events", (0).to_bytes(8, "big"), b"\x93\xcb\x41"],  # truncated
                [b"kv-events", (1).to_bytes(8, "big"), msgspec.msgpack.encode({"x": 1})],
                [b"kv-events", b"\x02", good],  # bad seq frame
                [b"kv-events", (2).to_bytes(8, "big"), good],
            ]
            deadline = time.monotonic() + 10
            while follower.stats.messages < len(messages):  # PUB drops messages until the SUB has joined
                assert time.monotonic() < deadline
                if follower.stats.messages == 0:
                    pub.send_multipart([b"kv-events", (0).to_bytes(8, "big"), b"\x93\xcb\x41"])
                    await asyncio.sleep(0.05)
                    continue
                for frames in messages[1:]:
                    pub.send_multipart(frames)
                await asyncio.sleep(0.2)
            await eventually(lambda: router.index.engine_hashes(POD) == {7})
            assert follower.stats.bad_payloads == 3
    finally:
        pub.close(linger=0)
        context.term()


async def test_chunked_snapshot_and_a_restarted_bridge(
    fresh_nats_server: NatsServer, endpoints: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from brixmesh.kv_index import pod_stream

    monkeypatch.setattr(pod_stream, "_SNAPSHOT_PART_BYTES", 1024)  # a few blocks per part
    events, replay = endpoints
    with kv_sim(events, replay) as engine:
        async with router_index(fresh_nats_server) as router:
            async with bridge(fresh_nats_server) as follower:
                await follower.follow(pod_info(engine.base_url, events, replay))
                for prompt in PROMPTS:
                    await complete(engine, prompt)
                await eventually(in_sync(follower, router.index))
                stream = follower.stream(POD)
                assert stream is not None
                await stream.snapshot()
                await asyncio.sleep(0.5)  # events of the last decode steps may still come
                await eventually(in_sync(follower, router.index))
                held = stream.blocks.engine_hashes()
            async with router_index(fresh_nats_server) as restarted:
                assert restarted.stats.snapshots_loaded == 1
                assert restarted.stats.snapshot_blocks > 1024 // (48 + 3 * BLOCK_SIZE)  # it came in several parts
                assert restarted.index.engine_hashes(POD) == held

            # A new bridge resumes the pod's stream (from the snapshot and the batches after it) in its epoch:
            # routers keep their entries and get only what is new.
            clears = router.index.counters.clears
            async with bridge(fresh_nats_server) as follower:
                await follower.follow(pod_info(engine.base_url, events, replay))
                await complete(engine, f"again {PROMPTS[0]}")
                await eventually(in_sync(follower, router.index))
                assert router.index.engine_hashes(POD) >= held
                assert follower.stats.resumed == 1 and router.index.counters.clears == clears


async def test_remote_tokenize_fallback_is_cached(endpoints: tuple[str, str]) -> None:
    from brixmesh.router.kv.tokenizer import PromptTokenizer

    events, replay = endpoints
    with kv_sim(events, replay) as engine:
        tokenizer = PromptTokenizer({}, lambda model: engine.base_url if model == MODEL_NAME else None)
        messages = [{"role": "user", "content": PROMPTS[0]}]
        first = await tokenizer.tokens(MODEL_NAME, messages=messages)
        again = await tokenizer.tokens(MODEL_NAME, messages=messages)
        assert first == again == LocalTokenizer(ASSETS).encode_chat(messages)
        assert await tokenizer.tokens(MODEL_NAME, prompt=PROMPTS[1]) == LocalTokenizer(ASSETS).encode_prompt(PROMPTS[1])
        assert tokenizer.remote_calls == 2
        assert await tokenizer.tokens("unknown-model", prompt="x") is None


async def test_adapter_blocks_live_in_their_own_namespace(
    fresh_nats_server: NatsServer, endpoints: tuple[str, str]
) -> None:
    events, replay = endpoints
    with kv_sim(events, replay) as engine:
        async with httpx.AsyncClient() as client:
            loaded = await client.post(f"{engine.base_url}/v1/load_lora_adapter",
                                       json={"lora_name": "lora-a", "lora_path": str(engine.lora_dirs["lora-a"])})  # fmt: skip
            assert loaded.status_code == 200, loaded.text
            response = await client.post(f"{engine.base_url}/v1/completions",
                                         json={"model": "lora-a", "prompt": PROMPTS[0], "max_tokens": 2})  # fmt: skip
            assert response.status_code == 200, response.text
        async with bridge(fresh_nats_server) as follower, router_index(fresh_nats_server) as router:
            await follower.follow(pod_info(engine.base_url, events, replay))  # replays the history from seq 0
            await eventually(in_sync(follower, router.index))
            tokens = LocalTokenizer(ASSETS).encode_prompt(PROMPTS[0])
            for adapter, expected in (("lora-a", True), (None, False), ("lora-b", False)):
                hashes = router.index.prompt_hashes(tokens, BLOCK_SIZE, MODEL_NAME, adapter)
                assert (POD in router.index.match(hashes, BLOCK_SIZE)) is expected, adapter


async def test_discovery_from_pods_list_then_removal_clears_the_pod(
    fresh_nats_server: NatsServer, endpoints: tuple[str, str]
) -> None:
    from brixmesh.common.messages import PodEvent, PodList, PodListRequest, PodStatus
    from brixmesh.common.subjects import PODS, PODS_LIST

    events, replay = endpoints
    with kv_sim(events, replay) as engine:
        await complete(engine, PROMPTS[0])
        info = pod_info(engine.base_url, events, replay)
        orchestrator = await Bus.connect(fresh_nats_server.url, name="orchestrator")
        listing = PodList(pods=[PodStatus(pod=info, phase="ready", ready=True, created_at=0.0, phase_since=0.0)],
                          ts=time.time())  # fmt: skip
        await orchestrator.serve(PODS_LIST.template, PodListRequest, lambda _subject, _request: listing)
        try:
            async with bridge(fresh_nats_server) as follower, router_index(fresh_nats_server) as router:
                kv_bus = await Bus.connect(fresh_nats_server.url, name="kv-index-discovery")
                try:
                    await follower.attach(kv_bus)
                    assert follower.pods == [POD]
                    await eventually(in_sync(follower, router.index))
                    await orchestrator.publish(PODS.format(kind="removed", deployment="d", pod=POD),
                                               PodEvent(kind="removed", pod=info, ts=time.time()))  # fmt: skip
                    await eventually(lambda: follower.pods == [] and router.index.pod_blocks(POD) == 0)
                finally:
                    await kv_bus.close()
        finally:
            await orchestrator.close()


async def test_router_is_ready_when_the_history_it_waited_for_is_gone(fresh_nats_server: NatsServer) -> None:
    from brixmesh.common.kv_streams import events_stream
    from brixmesh.common.messages import KvAllCleared, KvEventBatch
    from brixmesh.common.subjects import KV_EVENTS, KV_EVENTS_STREAM

    bus = await Bus.connect(fresh_nats_server.url, name="kv-index")
    try:
        await bus.ensure_stream(events_stream())
        js = bus.jetstream
        await js.publish(KV_EVENTS.format(model=MODEL_NAME, pod=POD),
                         msgspec.msgpack.encode(KvEventBatch(POD, MODEL_NAME, 0, time.time(), [KvAllCleared()], 1)))  # fmt: skip
        router_bus = await Bus.connect(fresh_nats_server.url, name="router")
        follower = IndexFollower(router_bus, PrefixIndex())
        released = asyncio.Event()

        async def held_back(_msg: object) -> None:  # the message it waits for is never handled
            await released.wait()

        follower._on_message = held_back  # type: ignore[method-assign, assignment]
        try:
            await follower.start()
            assert not follower.ready
            await js.purge_stream(KV_EVENTS_STREAM)
            assert await follower.wait_ready(5.0)
        finally:
            released.set()
            await follower.stop()
            await router_bus.close()
    finally:
        await bus.close()


async def test_long_prefill_is_split_under_the_servers_max_payload(
    tmp_path: Path, endpoints: tuple[str, str]
) -> None:
    """A ~960-token prefill is one BlockStored of 30 blocks (~3 KB encoded); the server takes 2 KB at most.
    The bridge splits it into batches under the limit: nothing fails or is resynced, routers see it all."""
    config = tmp_path / "nats-server.conf"
    config.write_text("max_payload: 2048\n")
    nats = NatsServer(tmp_path / "nats", config=config).start()
    try:
        events, replay = endpoints
        with kv_sim(events, replay) as engine:
            async with bridge(nats) as follower, router_index(nats) as router:
                await follower.follow(pod_info(engine.base_url, events, replay))
                await complete(engine, LONG_PROMPT)
                await eventually(lambda: prompt_blocks(router.index, LONG_PROMPT).get(POD, 0) >= 29)
                await eventually(in_sync(follower, router.index))
                assert follower.stats.publish_errors == 0 and follower.stats.resyncs == 0
                stream = follower.stream(POD)
                assert stream is not None
                await stream.snapshot()  # snapshot parts, too, stay under the limit
                assert follower.stats.snapshots == 1 and follower.stats.publish_errors == 0
            async with router_index(nats) as restarted:
                assert restarted.index.engine_hashes(POD) == router.index.engine_hashes(POD)
    finally:
        nats.stop()
