"""``brixmesh status``: ask every service instance on the bus for its heartbeat."""

from __future__ import annotations

import asyncio

from brixmesh.common.bus import Bus, NatsAuth, decoder_for, encode
from brixmesh.common.messages import Heartbeat, Ping
from brixmesh.common.subjects import MESH_PING


async def collect_heartbeats(nats_url: str, auth: NatsAuth, wait_s: float) -> list[Heartbeat]:
    """Every instance answering ``mesh.ping`` within ``wait_s``, sorted by service name."""
    bus = await Bus.connect(nats_url, name="brixmesh-status", setting="--nats-url", auth=auth)
    decoder = decoder_for(Heartbeat)
    replies: dict[str, Heartbeat] = {}
    inbox = bus.client.new_inbox()

    async def on_reply(msg: object) -> None:
        heartbeat = decoder.decode(msg.data)  # type: ignore[attr-defined]
        replies[heartbeat.instance_id] = heartbeat

    await bus.client.subscribe(inbox, cb=on_reply)
    await bus.client.publish(MESH_PING.template, encode(Ping(sender="brixmesh-status")), reply=inbox)
    await asyncio.sleep(wait_s)
    await bus.close()
    return sorted(replies.values(), key=lambda h: (h.service, h.instance_id))
