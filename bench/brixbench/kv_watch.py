"""What the engines' KV caches did during a run, beside their counters: blocks evicted per engine (from
their own ``BlockRemoved`` events) and the hit rate an unlimited cache would have reached on the same prompts.

:func:`unlimited_cache_hit_rate` is pure; :class:`EvictionCounter` subscribes to every engine's event stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import msgspec
import zmq
import zmq.asyncio
from brixmesh.engine_sim.kv_event_types import BlockRemoved, KvEvent


class EventBatch(msgspec.Struct, array_like=True):
    """One ZMQ KV-event payload, as vLLM 0.32 (and the simulator) send it."""

    ts: float
    events: list[KvEvent]
    data_parallel_rank: int | None = None


decode_batch = msgspec.msgpack.Decoder(EventBatch).decode


def block_keys(token_ids: Sequence[int], block_size: int) -> list[int]:
    """One key per full block, chained: equal keys mean equal prefixes up to that block."""
    keys, key = [], 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        key = hash((key, tuple(token_ids[start : start + block_size])))
        keys.append(key)
    return keys


def unlimited_cache_hit_rate(requests: Iterable[tuple[Sequence[int], Sequence[int]]],
                             block_size: int) -> float:
    """Hit rate of one never-evicting cache that saw every earlier request, counted as vLLM counts it.

    ``requests`` are (prompt, output) token ids in sending order. Hits are whole leading blocks, at most all
    but the prompt's last token; queries are prompt tokens. An engine caches the full blocks of everything it
    computed: the prompt and the output but its last token (a conversation's next turn hits its answer)."""
    seen: set[int] = set()
    hits = queries = 0
    for tokens, output in requests:
        keys = block_keys(tokens, block_size)
        cacheable = (len(tokens) - 1) // block_size
        matched = 0
        while matched < min(cacheable, len(keys)) and keys[matched] in seen:
            matched += 1
        hits += matched * block_size
        queries += len(tokens)
        seen.update(block_keys([*tokens, *output][:-1], block_size) if output else keys)
    return hits / queries if queries else float("nan")


class EvictionCounter:
    """Counts ``BlockRemoved`` blocks per engine while open (``endpoints`` in the fleet's engine order)."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.removed = [0] * len(endpoints)
        self._context = zmq.asyncio.Context()
        self._sockets = []
        for endpoint in endpoints:
            sock = self._context.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(endpoint)
            self._sockets.append(sock)
        self._tasks = [asyncio.create_task(self._follow(i, sock)) for i, sock in enumerate(self._sockets)]

    async def _follow(self, index: int, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                batch = decode_batch(frames[-1])
            except msgspec.DecodeError:
                continue
            for event in batch.events:
                if isinstance(event, BlockRemoved):
                    self.removed[index] += len(event.block_hashes)

    async def close(self) -> list[int]:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._sockets:
            sock.close(linger=0)
        self._context.term()
        return list(self.removed)
