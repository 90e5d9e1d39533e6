"""Routers that live inside the client: a uniform random pick (the baseline while no router runs) and the
oracle, which knows every engine's cache.

The oracle follows each engine's KV events (exact cache contents, the engines' own hashes and token ids)
plus the prompts it has sent that have not finished (what those engines are about to cache), tokenises each
prompt exactly as the engines do, and sends it to the engine holding its longest cached prefix; ties and
misses go to the engine with the fewest requests in flight. It is the hit-rate ceiling for a router that
must also keep engines busy.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from brixmesh.engine_sim.kv_event_types import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent
from brixmesh.engine_sim.tokenizer import SimTokenizer

from brixbench.client import Target
from brixbench.fleet import TOKENIZER_DIR, Fleet
from brixbench.kv_watch import block_keys, decode_batch


class RandomTarget:
    def __init__(self, urls: list[str], seed: int = 0) -> None:
        self.urls = urls
        self.rng = random.Random(seed)

    async def pick(self, body: dict[str, Any]) -> str:
        return self.rng.choice(self.urls)

    def release(self, base_url: str, body: dict[str, Any]) -> None:
        return None


class DirectRandom:
    """No router at all: the client picks an engine uniformly at random (the ratio baseline)."""

    name = "random (client-side)"
    pid = None

    def unavailable(self) -> str | None:
        return None

    async def start(self, fleet: Fleet, workdir: Path) -> Target:
        return RandomTarget(fleet.urls)

    async def stop(self) -> None:
        return None


class EngineCache:
    """One engine's cached blocks, keyed by content chain (parent key, block tokens)."""

    def __init__(self) -> None:
        self.by_engine_hash: dict[int | bytes, int] = {}
        self.keys: Counter[int] = Counter()
        self.pending: Counter[int] = Counter()

    def apply(self, event: KvEvent, block_size: int) -> None:
        if isinstance(event, BlockStored):
            parent = self.by_engine_hash.get(event.parent_block_hash) if event.parent_block_hash else None
            key = parent if parent is not None else 0
            for i, engine_hash in enumerate(event.block_hashes):
                key = hash((key, tuple(event.token_ids[i * block_size : (i + 1) * block_size])))
                if engine_hash not in self.by_engine_hash:
                    self.by_engine_hash[engine_hash] = key
                    self.keys[key] += 1
        elif isinstance(event, BlockRemoved):
            for engine_hash in event.block_hashes:
                key = self.by_engine_hash.pop(engine_hash, None)
                if key is not None:
                    self.keys[key] -= 1
                    if self.keys[key] <= 0:
                        del self.keys[key]
        elif isinstance(event, AllBlocksCleared):
            self.by_engine_hash.clear()
            self.keys.clear()

    def matched(self, keys: list[int]) -> int:
        count = 0
        for key in keys:
            if key not in self.keys and key not in self.pending:
                break
            count += 1
        return count


class OracleTarget:
    def __init__(self, fleet: Fleet) -> None:
        self.urls = list(fleet.urls)
        self.block_size = fleet.spec.block_size
        self.caches = {url: EngineCache() for url in self.urls}
        self.inflight = dict.fromkeys(self.urls, 0)
        self.tokenizer = SimTokenizer(TOKENIZER_DIR)
        self._sent: dict[int, list[int]] = {}
        self._context = zmq.asyncio.Context()
        self._sockets: list[tuple[str, zmq.asyncio.Socket]] = []
        for url, endpoint in zip(fleet.urls, fleet.kv_endpoints, strict=True):
            sock = self._context.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(endpoint)
            self._sockets.append((url, sock))
        self._tasks = [asyncio.create_task(self._follow(url, sock)) for url, sock in self._sockets]

    async def _follow(self, url: str, sock: zmq.asyncio.Socket) -> None:
        cache = self.caches[url]
        while True:
            frames = await sock.recv_multipart()
            for event in decode_batch(frames[-1]).events:
                cache.apply(event, self.block_size)

    def _tokens(self, body: dict[str, Any]) -> list[int]:
        if "messages" in body:
            return self.tokenizer.encode_chat(body["messages"])
        return self.tokenizer.encode(body["prompt"])

    async def pick(self, body: dict[str, Any]) -> str:
        keys = block_keys(self._tokens(body), self.block_size)
        best = max(self.urls, key=lambda url: (self.caches[url].matched(keys), -self.inflight[url]))
        self.inflight[best] += 1
        self.caches[best].pending.update(keys)
        self._sent[id(body)] = keys
        return best

    def release(self, base_url: str, body: dict[str, Any]) -> None:
        self.inflight[base_url] -= 1
        keys = self._sent.pop(id(body), [])
        pending = self.caches[base_url].pending
        pending.subtract(keys)
        for key in keys:
            if pending[key] <= 0:
                pending.pop(key, None)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, sock in self._sockets:
            sock.close(linger=0)
        self._context.term()


class Oracle:
    name = "oracle (knows every cache)"
    pid = None

    def __init__(self) -> None:
        self._target: OracleTarget | None = None

    def unavailable(self) -> str | None:
        return None

    async def start(self, fleet: Fleet, workdir: Path) -> Target:
        self._target = OracleTarget(fleet)
        await asyncio.sleep(0.3)  # let the SUB sockets connect before the first engine step
        return self._target

    async def stop(self) -> None:
        if self._target is not None:
            await self._target.close()
            self._target = None
