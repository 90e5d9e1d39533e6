import asyncio

import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from brixmesh.common.bus import Batcher, Bus
from brixmesh.common.messages import Heartbeat, PodMetrics
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import METRICS_PODS

from tests.waiting import eventually


def _metrics(pod: str, running: float) -> PodMetrics:
    return PodMetrics(pod=pod, model="m", deployment="d", ts=1.0, stale=False, running=running)


async def test_typed_publish_subscribe_round_trip(bus: Bus) -> None:
    received: list[tuple[str, PodMetrics]] = []
    await bus.subscribe(METRICS_PODS.pattern(), PodMetrics, lambda subject, msg: received.append((subject, msg)))
    await bus.publish(METRICS_PODS.format(pod="p1"), _metrics("p1", 3))
    await bus.client.flush()
    await eventually(lambda: received)
    assert received == [("metrics.pods.p1", _metrics("p1", 3))]


async def test_a_subscription_is_in_place_when_subscribe_returns(nats_server: NatsServer) -> None:
    """The PONG that subscribe() waits for answers a PING sent after the SUB (the server handles one
    connection's commands in order), so a message published from then on reaches the subscription. What the
    client sends is recorded by a proxy in front of the server."""
    sent = bytearray()
    host, port = nats_server.url.removeprefix("nats://").rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
        while data := await reader.read(65536):
            if record:
                sent.extend(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(
            pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False)
        )

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    bus = await Bus.connect(f"nats://127.0.0.1:{proxy.sockets[0].getsockname()[1]}", name="ordered")
    try:
        await bus.subscribe("test.ordered", PodMetrics, lambda _s, _m: None)
        assert 0 <= sent.find(b"SUB test.ordered ") < sent.rfind(b"PING\r\n"), bytes(sent)
    finally:
        await bus.close()
        proxy.close()


async def test_undecodable_payloads_are_counted_and_skipped(bus: Bus) -> None:
    received: list[PodMetrics] = []
    await bus.subscribe("test.bad.*", PodMetrics, lambda _s, msg: received.append(msg))
    await bus.client.publish("test.bad.a", b"\xc1 not msgpack")
    await bus.publish("test.bad.b", Heartbeat(service="x", instance_id="i", version="v", pid=1, started_at=0,
                                              uptime_s=0, ready=True))
    await bus.publish("test.bad.c", _metrics("p", 1))
    await bus.client.flush()
    await eventually(lambda: received)
    assert received == [_metrics("p", 1)]
    assert bus.decode_errors == 2


async def test_ensure_stream_is_idempotent_and_applies_changes(bus: Bus) -> None:
    config = StreamConfig(name="TEST_IDEMPOTENT", subjects=["idem.>"], retention=RetentionPolicy.LIMITS,
                          storage=StorageType.MEMORY, max_msgs=100)
    await bus.ensure_stream(config)
    await bus.ensure_stream(config)
    await asyncio.gather(*(bus.ensure_stream(config) for _ in range(3)))
    changed = StreamConfig(name="TEST_IDEMPOTENT", subjects=["idem.>"], retention=RetentionPolicy.LIMITS,
                           storage=StorageType.MEMORY, max_msgs=500)
    await bus.ensure_stream(changed)
    info = await bus.jetstream.stream_info("TEST_IDEMPOTENT")
    assert info.config.max_msgs == 500


async def test_reconnects_after_the_server_restarts(tmp_path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    port = int(server.url.rsplit(":", 1)[1])
    bus = await Bus.connect(server.url, name="reconnect")
    received: list[PodMetrics] = []
    await bus.subscribe("metrics.pods.*", PodMetrics, lambda _s, msg: received.append(msg))
    hook_saw_connected: list[bool] = []

    async def on_reconnect() -> None:
        hook_saw_connected.append(bus.connected)

    bus.on_reconnect(on_reconnect)
    server.stop()
    restarted = NatsServer(tmp_path / "nats", port=port).start()
    try:
        await eventually(lambda: hook_saw_connected, 15)
        assert hook_saw_connected == [True] and bus.reconnects == 1
        await bus.publish("metrics.pods.p", _metrics("p", 7))
        await bus.client.flush()
        await eventually(lambda: received)
        assert received and received[0].running == 7
    finally:
        await bus.close()
        restarted.stop()


async def test_batcher_flushes_on_size_and_on_delay() -> None:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        flushed.append(items)

    batcher: Batcher[int] = Batcher(flush, max_items=3, max_delay_s=0.05)
    for i in range(4):
        batcher.add(i)
    await asyncio.sleep(0)
    assert flushed == [[0, 1, 2]]
    await asyncio.sleep(0.1)
    assert flushed == [[0, 1, 2], [3]]
    batcher.add(9)
    await batcher.drain()
    assert flushed[-1] == [9]


@pytest.mark.parametrize("url", ["nats://127.0.0.1:9"])
async def test_unreachable_server_is_one_clear_error(url: str) -> None:
    from brixmesh.common.bus import BusConnectError

    with pytest.raises(BusConnectError, match="cannot reach NATS at nats://127.0.0.1:9 \\(set BRIXMESH_NATS_URL\\)"):
        await Bus.connect(url, name="x", timeout_s=1)
