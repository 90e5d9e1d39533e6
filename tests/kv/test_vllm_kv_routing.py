"""Acceptance with two real vLLM 0.32 engines (CPU): KV events -> kv-index bridge -> JetStream -> router index.

- follow-up turns of a conversation are routed (``kv-aware``) to the engine holding its prefix, and that
  engine's prefix-cache hit counter confirms it;
- the router's index for each engine equals the blocks the engine reported stored and not removed (checked
  by an independent plain-pyzmq subscriber that replays each engine's events from seq 0).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence

import httpx
import msgspec
import pytest
import zmq
import zmq.asyncio

from brixmesh.common.bus import Bus
from brixmesh.common.kv_streams import events_stream, snapshots_stream
from brixmesh.common.messages import PodInfo
from brixmesh.common.servers import NatsServer
from brixmesh.kv_index.discovery import PodFollower
from brixmesh.router.kv.follower import IndexFollower
from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.tokenizer import LocalTokenizer
from brixmesh.router.routing import Endpoint, RequestContext, Router, default_registry
from brixmesh.router.routing.scorers.kv_aware import KvAware
from tests.plugins.vllm_engine import VllmEngine
from tests.waiting import eventually

pytestmark = pytest.mark.vllm

SYSTEM = "You are a terse assistant for a storage team. " + " ".join(f"Rule {i}: keep answers short." for i in range(12))
HITS = re.compile(r'^vllm:prefix_cache_hits_total\{[^}]*\} ([0-9.e+]+)$', re.M)


class EngineEvents:
    """Independent reference: every event of one engine from seq 0 (replay) plus live, refcounted."""

    def __init__(self, engine: VllmEngine, context: zmq.asyncio.Context) -> None:
        self.engine = engine
        self.held: dict[int, int] = {}
        self.next_seq = 0
        self._sub = context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, engine.topic.encode())
        self._sub.connect(engine.kv_events_endpoint)
        self._dealer = context.socket(zmq.DEALER)
        self._dealer.connect(engine.kv_replay_endpoint)

    def _apply(self, seq: int, payload: bytes) -> None:
        if self.next_seq == 0 and not self.held:
            # The session's engines may have served other tests long enough for their replay buffer to have
            # dropped the oldest batches: start where it starts, as the bridge does.
            self.next_seq = seq
        if seq < self.next_seq:
            return
        assert seq == self.next_seq, f"reference subscriber missed seq {self.next_seq}..{seq - 1}"
        self.next_seq = seq + 1
        for event in msgspec.msgpack.decode(payload)[1]:
            kind = event["type"]
            if kind == "BlockStored" and event["medium"] in (None, "GPU"):
                for h in event["block_hashes"]:
                    self.held[h] = self.held.get(h, 0) + 1
            elif kind == "BlockRemoved" and event.get("medium") in (None, "GPU"):
                for h in event["block_hashes"]:
                    if self.held.get(h):
                        self.held[h] -= 1
                        if not self.held[h]:
                            del self.held[h]
            elif kind == "AllBlocksCleared":
                self.held.clear()

    async def replay(self) -> None:
        await self._dealer.send_multipart([b"", (0).to_bytes(8, "big")])
        while True:
            frames = await asyncio.wait_for(self._dealer.recv_multipart(), 10)
            if frames[2] == b"\xff" * 8:
                return
            self._apply(int.from_bytes(frames[2], "big"), frames[3])

    async def drain(self) -> None:
        while await self._sub.poll(0):
            _topic, seq, payload = await self._sub.recv_multipart()
            seq_int = int.from_bytes(seq, "big")
            if seq_int > self.next_seq:
                await self.replay()
            self._apply(seq_int, payload)

    def close(self) -> None:
        self._sub.close(linger=0)
        self._dealer.close(linger=0)


async def hits(client: httpx.AsyncClient, engine: VllmEngine) -> float:
    text = (await client.get(f"{engine.base_url}/metrics")).text
    return sum(float(v) for v in HITS.findall(text))


async def test_follow_ups_land_on_the_engine_holding_the_prefix(
    real_vllm_pair: tuple[VllmEngine, VllmEngine], fresh_nats_server: NatsServer
) -> None:
    engines = list(real_vllm_pair)
    names = [f"vllm-{i}" for i in range(len(engines))]
    tokenizer = LocalTokenizer(engines[0].model_dir)
    context = zmq.asyncio.Context()
    references = [EngineEvents(engine, context) for engine in engines]
    bridge_bus = await Bus.connect(fresh_nats_server.url, name="kv-index")
    router_bus = await Bus.connect(fresh_nats_server.url, name="router")
    await bridge_bus.ensure_stream(events_stream())
    await bridge_bus.ensure_stream(snapshots_stream())
    bridge = PodFollower(
        bridge_bus.jetstream,
        max_payload=lambda: bridge_bus.client.max_payload,
        replay_timeout_s=2.0,
        snapshot_interval_s=3600,
    )
    index = PrefixIndex()
    follower = IndexFollower(router_bus, index)
    client = httpx.AsyncClient(timeout=60)
    try:
        await asyncio.sleep(0.5)  # let the reference SUB sockets join before replaying
        for reference in references:
            await reference.replay()
        for name, engine in zip(names, engines):
            await bridge.follow(PodInfo(pod=name, deployment="d", model=engine.model, engine="vllm",
                                        endpoint=engine.base_url, kv_events_endpoint=engine.kv_events_endpoint,
                                        kv_replay_endpoint=engine.kv_replay_endpoint, kv_events_topic=engine.topic,
                                        block_size=engine.block_size))  # fmt: skip
        await follower.start()
        assert await follower.wait_ready(10)

        registry = default_registry()
        registry.register_scorer("kv-aware", lambda env: KvAware(index))

        async def tokenize(ctx: RequestContext) -> Sequence[int] | None:
            return tokenizer.encode_chat(ctx.messages or [])

        registry.env.tokenizer = tokenize
        router = Router(registry)
        strategy = registry.strategy("kv-aware")
        endpoints = [Endpoint(name=n, url=e.base_url, model=e.model, block_size=e.block_size)
                     for n, e in zip(names, engines)]  # fmt: skip

        async def chat(engine: VllmEngine, messages: list[dict[str, str]]) -> str:
            response = await client.post(f"{engine.base_url}/v1/chat/completions",
                                         json={"model": engine.model, "messages": messages, "max_tokens": 8,
                                               "temperature": 0})  # fmt: skip
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["message"]["content"]

        async def engine_tokens(messages: list[dict[str, str]]) -> list[int]:
            response = await client.post(f"{engines[0].base_url}/tokenize",
                                         json={"model": engines[0].model, "messages": messages})  # fmt: skip
            return response.json()["tokens"]

        # The router's tokenizer must agree with the engine's /tokenize, or no block could ever match.
        probe = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
        assert tokenizer.encode_chat(probe).tolist() == await engine_tokens(probe)

        conversations = [
            [{"role": "system", "content": f"{SYSTEM} Topic: {topic}."}, {"role": "user", "content": question}]
            for topic, question in (("disks", "Which disk failed first?"), ("networks", "Why is the link slow?"))
        ]
        for i, conversation in enumerate(conversations):  # first turns: one conversation per engine
            conversation.append({"role": "assistant", "content": await chat(engines[i], conversation)})
        await eventually(lambda: all(index.pod_blocks(n) > 0 for n in names), 20)

        for turn in range(2):
            for i, conversation in enumerate(conversations):
                conversation.append({"role": "user", "content": f"And follow-up number {turn} about that?"})
                ctx = RequestContext(request_id=uuid.uuid4().hex, api="chat", model=engines[0].model, body={},
                                     base_model=engines[0].model, messages=conversation)  # fmt: skip
                decision = await router.route(ctx, endpoints, strategy)
                if turn == 1:  # from turn 0's cached tokens, plus the answer and the new question
                    assert list(await ctx.token_ids() or []) == await engine_tokens(conversation)
                chosen = decision.ranked[0]
                assert chosen.name == names[i], (turn, i, decision.scores)
                assert decision.scores[names[i]] > 0.5
                target = engines[names.index(chosen.name)]
                before = await hits(client, target)
                router.routed(ctx, decision, chosen)
                conversation.append({"role": "assistant", "content": await chat(target, conversation)})
                assert await hits(client, target) > before  # the engine's own counter: a prefix-cache hit

        assert tokenizer.prefix_reuses == len(conversations)
        for name, engine, reference in zip(names, engines, references):
            async def same(name: str = name, reference: EngineEvents = reference) -> bool:
                await reference.drain()
                return index.engine_hashes(name) == set(reference.held)

            await eventually(same, 20)
        assert bridge.stats.bad_payloads == 0 and bridge.stats.unrecovered == 0
    finally:
        await client.aclose()
        await follower.stop()
        await bridge.close()
        for reference in references:
            reference.close()
        context.destroy(linger=0)
        await router_bus.close()
        await bridge_bus.close()


async def test_salted_prompts_hash_as_the_engine_does(
    real_vllm: VllmEngine, fresh_nats_server: NatsServer
) -> None:
    """vLLM folds ``cache_salt`` into the first block: the router's salted chain must find exactly the blocks
    the engine stored for the salted prompt, and nothing under another salt or none."""
    engine = real_vllm
    tokenizer = LocalTokenizer(engine.model_dir)
    bridge_bus = await Bus.connect(fresh_nats_server.url, name="kv-index")
    router_bus = await Bus.connect(fresh_nats_server.url, name="router")
    await bridge_bus.ensure_stream(events_stream())
    await bridge_bus.ensure_stream(snapshots_stream())
    bridge = PodFollower(
        bridge_bus.jetstream,
        max_payload=lambda: bridge_bus.client.max_payload,
        replay_timeout_s=2.0,
        snapshot_interval_s=3600,
    )
    index = PrefixIndex()
    follower = IndexFollower(router_bus, index)
    prompt = f"{SYSTEM} Salted request {uuid.uuid4().hex}."
    tokens = tokenizer.encode_prompt(prompt)
    salt = f"tenant-{uuid.uuid4().hex[:8]}"

    def held(cache_salt: str | None) -> int:
        hashes = index.prompt_hashes(tokens, engine.block_size, engine.model, None, cache_salt)
        found = index.match(hashes, engine.block_size).get("vllm-salted")
        return found.blocks if found else 0

    try:
        await bridge.follow(PodInfo(
            pod="vllm-salted", deployment="d", model=engine.model, engine="vllm", endpoint=engine.base_url,
            kv_events_endpoint=engine.kv_events_endpoint, kv_replay_endpoint=engine.kv_replay_endpoint,
            kv_events_topic=engine.topic, block_size=engine.block_size,
        ))  # fmt: skip
        await follower.start()
        assert await follower.wait_ready(10)
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.post(f"{engine.base_url}/v1/completions",
                                         json={"model": engine.model, "prompt": prompt, "max_tokens": 1,
                                               "cache_salt": salt})  # fmt: skip
            assert response.status_code == 200, response.text
        full = len(tokens) // engine.block_size
        assert full >= 2
        await eventually(lambda: held(salt) == full, 20)
        assert held(None) == 0 and held(salt + "-other") == 0
    finally:
        await follower.stop()
        await bridge.close()
        await router_bus.close()
        await bridge_bus.close()
