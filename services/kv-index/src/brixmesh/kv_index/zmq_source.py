"""One engine's ZMQ KV-event sockets: the SUB stream and the replay DEALER.

Bind or connect follows vLLM's rule from the engine's side: its PUB binds when the endpoint has ``*`` or
``::`` or is ``ipc://``/``inproc://`` (we connect, with ``*`` replaced by the pod's host); otherwise it
connects (we bind that address, and a restarted engine reconnects to us). The replay ROUTER always binds.

Replay: send ``[b"", start_seq (8-byte BE)]``; the engine answers ``[b"", topic, seq8, payload]`` per buffered
batch with seq >= start, then ``[b"", b"", ff*8, b""]``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq
import zmq.asyncio

END_SEQ = (-1).to_bytes(8, "big", signed=True)
_RCV_HWM = 100_000


def engine_binds(endpoint: str) -> bool:
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def reachable(endpoint: str, pod_url: str) -> str:
    """``tcp://*:5557`` as seen from here: the wildcard becomes the pod's host."""
    if "*" not in endpoint:
        return endpoint
    host = urlsplit(pod_url).hostname or "127.0.0.1"
    return endpoint.replace("*", host, 1)


@dataclass(frozen=True, slots=True)
class SourceConfig:
    events_endpoint: str
    replay_endpoint: str
    topic: str
    pod_url: str


class EngineEventSource:
    def __init__(self, config: SourceConfig, context: zmq.asyncio.Context) -> None:
        self.config = config
        self._context = context
        self._sub = context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.RCVHWM, _RCV_HWM)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, config.topic.encode())
        if engine_binds(config.events_endpoint):
            self._sub.connect(reachable(config.events_endpoint, config.pod_url))
        else:
            self._sub.bind(config.events_endpoint)
        self._dealer: zmq.asyncio.Socket | None = None

    async def receive(self, timeout_s: float) -> list[bytes] | None:
        """The next message's frames, or None after ``timeout_s`` without one."""
        if not await self._sub.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        return await self._sub.recv_multipart()

    def receive_ready(self) -> list[bytes] | None:
        """A message already queued, without waiting (to coalesce a burst), else None."""
        if not self._sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return None
        try:
            return self._sub.recv_multipart(zmq.NOBLOCK).result()  # type: ignore[union-attr]
        except zmq.Again:
            return None

    async def replay(self, start: int, timeout_s: float) -> list[tuple[int, bytes]] | None:
        """Buffered batches with seq >= ``start`` as (seq, payload); None without a replay endpoint, on
        timeout, or on a malformed answer."""
        if not self.config.replay_endpoint:
            return None
        if self._dealer is None:
            self._dealer = self._context.socket(zmq.DEALER)
            self._dealer.setsockopt(zmq.LINGER, 0)
            self._dealer.connect(reachable(self.config.replay_endpoint, self.config.pod_url))
        dealer = self._dealer
        await dealer.send_multipart((b"", start.to_bytes(8, "big")))
        found: list[tuple[int, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            left = deadline - loop.time()
            if left <= 0 or not await dealer.poll(int(left * 1000), zmq.POLLIN):
                self._reset_dealer()  # a late answer must not be read as the reply to the next request
                return None
            frames = await dealer.recv_multipart()
            if len(frames) != 4:
                self._reset_dealer()
                return None
            _, _topic, seq_bytes, payload = frames
            if seq_bytes == END_SEQ:
                return found
            found.append((int.from_bytes(seq_bytes, "big"), payload))

    def _reset_dealer(self) -> None:
        if self._dealer is not None:
            self._dealer.close(linger=0)
            self._dealer = None

    def close(self) -> None:
        self._reset_dealer()
        self._sub.close(linger=0)
