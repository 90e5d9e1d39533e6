"""A real tier node (the server's own protocol and store on a loopback port) driven through the client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import msgspec
import pytest

from brixmesh.common.kv_tier import (
    HEADER, MAGIC, MISSING, OP_ERROR, OP_GET, VERSION, ErrorReply, KvTierClient, TierError, TierNamespace,
    encode_header,
)  # fmt: skip
from brixmesh.common.ports import free_port
from brixmesh.kv_index.tier.eviction import S3Fifo
from brixmesh.kv_index.tier.server import TierCore, serve
from brixmesh.kv_index.tier.store import SlabStore, chunk_size

NS = TierNamespace(model="m", dtype="bfloat16", block_size=16)
BLOCK = 128 << 10


def block(seed: int, size: int = BLOCK) -> bytes:
    return bytes([seed % 251]) * size


async def start_node(
    budget: int = 64 << 20, max_value: int = 1 << 20
) -> tuple[asyncio.Server, TierCore, str]:
    core = TierCore(SlabStore(budget, S3Fifo, slab_bytes=1 << 20), max_value, 64 << 20)
    port = free_port()
    server = await serve(core, "127.0.0.1", port)
    return server, core, f"127.0.0.1:{port}"


@pytest.fixture
async def node() -> AsyncIterator[tuple[TierCore, str]]:
    server, core, address = await start_node()
    yield core, address
    server.close()


async def test_put_get_exists_and_longest_prefix(node: tuple[TierCore, str]) -> None:
    _core, address = node
    client = KvTierClient([address])
    keys = [11, 12, 13, 14]
    reply = await client.put(NS, keys[:3], [block(k) for k in keys[:3]])
    assert (reply.stored, reply.present) == (3, 0)
    again = await client.put(NS, keys[:1], [block(0)])
    assert (again.stored, again.present) == (0, 1)
    found = await client.get(NS, [12, 99, 11])
    assert [bytes(v) if v is not None else None for v in found] == [block(12), None, block(11)]
    assert await client.exists(NS, keys) == [True, True, True, False]
    assert await client.longest_prefix(NS, keys) == 3
    assert await client.longest_prefix(NS, [99, *keys]) == 0
    await client.close()


async def test_namespace_fields_keep_blocks_apart(node: tuple[TierCore, str]) -> None:
    _core, address = node
    client = KvTierClient([address])
    await client.put(NS, [7, b"\x01" * 32], [block(1), block(2)])
    for other in (
        msgspec.structs.replace(NS, model="other"), msgspec.structs.replace(NS, dtype="float16"),
        msgspec.structs.replace(NS, tp_rank=1), msgspec.structs.replace(NS, block_size=32),
        msgspec.structs.replace(NS, adapter="sql-lora"), msgspec.structs.replace(NS, cache_salt="tenant-a"),
    ):
        assert await client.exists(other, [7, b"\x01" * 32]) == [False, False]
    assert await client.exists(NS, [7, b"\x01" * 32]) == [True, True]
    await client.close()


async def test_budget_evicts_instead_of_growing() -> None:
    server, core, address = await start_node(budget=4 << 20)
    client = KvTierClient([address])
    for start in range(0, 200, 20):
        await client.put(NS, list(range(start, start + 20)), [block(k) for k in range(start, start + 20)])
    assert core.store.allocated_bytes <= 4 << 20
    assert core.store.counters.evictions > 0
    assert len(core.store) == (4 << 20) // chunk_size(BLOCK)
    held = [v for v in await client.get(NS, list(range(200))) if v is not None]
    assert held and all(len(v) == BLOCK for v in held)
    await client.close()
    server.close()


async def test_several_nodes_spread_keys_and_a_dead_node_is_a_miss() -> None:
    nodes = [await start_node() for _ in range(3)]
    client = KvTierClient([address for _, _, address in nodes], timeout_s=1.0, retry_after_s=30.0)
    keys = list(range(300))
    await client.put(NS, keys, [block(k, 4096) for k in keys])
    counts = [len(core.store) for _, core, _ in nodes]
    assert sum(counts) == 300 and min(counts) > 30, counts
    nodes[1][0].close()
    for transport in list(client._transports.values()):
        await transport.close()
    await nodes[1][0].wait_closed()
    found = await client.get(NS, keys)
    assert sum(v is not None for v in found) == 300 - counts[1]
    assert all(bytes(v) == block(k, 4096) for k, v in zip(keys, found) if v is not None)
    assert (await client.put(NS, [1000], [block(1, 4096)])).stored in (0, 1)
    assert client.unavailable > 0
    await client.close()
    for server, _, _ in (nodes[0], nodes[2]):
        server.close()


async def test_unreachable_node_answers_misses_quickly() -> None:
    client = KvTierClient([f"127.0.0.1:{free_port()}"], timeout_s=1.0)
    assert await client.get(NS, [1, 2]) == [None, None]
    assert await client.longest_prefix(NS, [1, 2]) == 0
    assert (await client.put(NS, [1], [b"x"])).stored == 0
    await client.close()


async def test_oversized_value_and_bad_metadata_get_errors_and_the_connection_goes_on(
    node: tuple[TierCore, str],
) -> None:
    core, address = node
    client = KvTierClient([address])
    with pytest.raises(TierError, match="value_too_large"):
        await client.put(NS, [1, 2], [block(1), b"\0" * (2 << 20)])
    assert await client.exists(NS, [1, 2]) == [False, False]
    transport = client._transports[address]
    frame = await transport.call(OP_GET, b"\xc1garbage", [], 2.0)
    assert frame.op == OP_ERROR
    assert msgspec.msgpack.decode(frame.meta, type=ErrorReply).code == "bad_request"
    frame = await transport.call(42, b"", [], 2.0)
    assert msgspec.msgpack.decode(frame.meta, type=ErrorReply).code == "unknown_op"
    assert (await client.put(NS, [3], [block(3)])).stored == 1
    assert core.counters.protocol_errors == 3
    await client.close()


async def test_bad_header_and_huge_frame_close_only_that_connection(node: tuple[TierCore, str]) -> None:
    _core, address = node
    host, port = address.split(":")
    for raw, code in (
        (b"XX" + b"\0" * (HEADER.size - 2), "bad_frame"),
        (encode_header(OP_GET, 5, 0, 1 << 40), "frame_too_large"),
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        header = await reader.readexactly(HEADER.size)
        magic, version, op, _request_id, meta_len, _payload = HEADER.unpack(header)
        assert (magic, version, op) == (MAGIC, VERSION, OP_ERROR)
        assert msgspec.msgpack.decode(await reader.readexactly(meta_len), type=ErrorReply).code == code
        assert await reader.read() == b""  # closed
        writer.close()
    client = KvTierClient([address])
    assert (await client.put(NS, [1], [block(1)])).stored == 1
    await client.close()


async def test_client_gone_mid_put_returns_the_reserved_chunks(node: tuple[TierCore, str]) -> None:
    core, address = node
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)))
    meta = msgspec.msgpack.encode([list(msgspec.structs.astuple(NS)), [1, 2], [BLOCK, BLOCK]])
    sock.sendall(encode_header(1, 1, len(meta), 2 * BLOCK) + meta + block(1))
    sock.close()
    client = KvTierClient([address])
    assert await client.exists(NS, [1, 2]) == [False, False]
    free_before = sum(len(c.free) for c in core.store._classes.values())
    reply = await client.put(NS, [1, 2], [block(1), block(2)])
    assert reply.stored == 2
    assert sum(len(c.free) for c in core.store._classes.values()) == free_before - 2
    await client.close()


async def test_get_into_lands_values_in_the_callers_buffers(node: tuple[TierCore, str]) -> None:
    _core, address = node
    client = KvTierClient([address])
    await client.put(NS, [1, 2], [block(1), block(2, 1000)])
    target = memoryview(bytearray(3 * BLOCK))
    buffers = [target[:BLOCK], target[BLOCK : 2 * BLOCK], target[2 * BLOCK : 2 * BLOCK + 10]]
    assert await client.get_into(NS, [1, 3, 2], buffers) == [BLOCK, MISSING, MISSING]  # 2: buffer too small
    assert bytes(target[:BLOCK]) == block(1) and bytes(target[BLOCK:]) == bytes(2 * BLOCK)
    assert await client.get_into(NS, [2], [target[BLOCK:]]) == [1000]
    assert bytes(target[BLOCK : BLOCK + 1000]) == block(2, 1000)
    await client.close()
