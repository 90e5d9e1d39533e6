"""The tier's optional L2: Redis, binary values, written behind L1.

Policy ``evict`` writes a block when L1 evicts it (Redis then holds what L1 could not); ``through`` writes
every stored block at once (L1 and Redis hold the same, so a tier restart loses nothing Redis kept). Writes
go through a bounded queue drained in pipelined batches: a slow Redis drops writes (counted), it never
slows a put; an unreachable Redis is a miss on read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import Literal

import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

L2Policy = Literal["evict", "through"]
_encoder = msgspec.msgpack.Encoder()
_BATCH = 64


def redis_key(key: Hashable) -> bytes:
    namespace, block = key  # type: ignore[misc]
    raw = block if isinstance(block, bytes) else block.to_bytes(8, "little")
    return b"kvt:" + _encoder.encode(namespace) + b"|" + raw


class RedisL2:
    def __init__(self, url: str, policy: L2Policy, ttl_s: int, max_pending: int = 1024) -> None:
        self.policy = policy
        self.ttl_s = ttl_s
        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._pending: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(max_pending)
        self.written = 0
        self.dropped = 0
        self.errors = 0

    def stored(self, key: Hashable, value: memoryview) -> None:
        if self.policy == "through":
            self._enqueue(key, value)

    def evicted(self, key: Hashable, value: memoryview) -> None:
        if self.policy == "evict":
            self._enqueue(key, value)

    def _enqueue(self, key: Hashable, value: memoryview) -> None:
        try:
            self._pending.put_nowait((redis_key(key), bytes(value)))
        except asyncio.QueueFull:
            self.dropped += 1

    async def get_many(self, keys: list[Hashable]) -> list[bytes | None]:
        try:
            return list(await self._redis.mget([redis_key(key) for key in keys]))
        except (RedisError, OSError):
            self.errors += 1
            return [None] * len(keys)

    async def write_forever(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < _BATCH and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            pipe = self._redis.pipeline(transaction=False)
            for key, value in batch:
                pipe.set(key, value, ex=self.ttl_s or None)
            try:
                await pipe.execute()
                self.written += len(batch)
            except (RedisError, OSError) as error:
                self.errors += 1
                self.dropped += len(batch)
                log.warning("redis write failed", extra={"error": str(error)})
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self._redis.aclose()
