"""Shared fixtures: real infrastructure servers on random loopback ports."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from brixmesh.common.bus import Bus
from brixmesh.common.servers import NatsServer, RedisServer

pytest_plugins = ["tests.plugins.vllm_engine"]


def pytest_configure(config: pytest.Config) -> None:
    """Tests stop CLIs and services with SIGINT (Ctrl-C). A shell that starts the suite in the background
    (`nohup make test &`) hands it SIGINT ignored, every process it starts inherits that, and those would
    never stop: the suite's processes get Python's default handling back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server (JetStream on) for the session; ``.url`` is its client URL."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own, for tests that restart it or need empty JetStream state."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; ``.url`` is ``redis://127.0.0.1:<port>/0``."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    connected = await Bus.connect(nats_server.url, name="test")
    yield connected
    await connected.close()
