"""NATS with authorization and TLS, against a real nats-server: no credentials, no bus; each service user
publishes only its own subjects; a service process connects with its settings; the compose/Kubernetes
config is the generated one."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import pytest

from brixmesh.common.bus import Bus, BusConnectError, NatsAuth
from brixmesh.common.messages import Heartbeat
from brixmesh.common.nats_auth import (
    CLI_USER,
    SERVICE_USERS,
    generate_passwords,
    password_variable,
    publish_allowed,
    server_config,
)
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import MESH_HEARTBEAT
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return generate_passwords()


@pytest.fixture(scope="module")
def auth_nats(tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]) -> Iterator[NatsServer]:
    directory = tmp_path_factory.mktemp("nats-auth")
    config = directory / "auth.conf"
    config.write_text(server_config(passwords))
    server = NatsServer(directory / "data", config=config).start()
    yield server
    server.stop()


class Connections:
    def __init__(self, server: NatsServer, passwords: dict[str, str]) -> None:
        self.server = server
        self.passwords = passwords
        self.buses: list[Bus] = []

    async def as_user(self, user: str) -> Bus:
        bus = await Bus.connect(
            self.server.url, name=user, auth=NatsAuth(user=user, password=self.passwords[user])
        )
        self.buses.append(bus)
        return bus


@pytest.fixture
async def users(auth_nats: NatsServer, passwords: dict[str, str]) -> AsyncIterator[Connections]:
    connections = Connections(auth_nats, passwords)
    yield connections
    for bus in connections.buses:
        await bus.close()


async def test_no_or_wrong_credentials_cannot_connect(
    auth_nats: NatsServer, passwords: dict[str, str]
) -> None:
    with pytest.raises(BusConnectError, match="refused our credentials: .*Authorization Violation"):
        await Bus.connect(auth_nats.url, name="anonymous", timeout_s=2)
    with pytest.raises(BusConnectError, match="refused our credentials"):
        await Bus.connect(
            auth_nats.url, name="x", timeout_s=2, auth=NatsAuth(user="router", password="guess")
        )


async def _delivered(listener: Bus, publisher: Bus, subject: str) -> bool:
    """Whether a message ``publisher`` sends on ``subject`` reaches ``listener`` (subscribing is open). A
    marker on the publisher's own inbox follows it: one connection's messages arrive in order, so once the
    marker is in, the message is in or never will be."""
    marker = f"_INBOX.marker.{uuid.uuid4().hex}"
    got: list[str] = []

    async def on_message(msg: object) -> None:
        got.append(msg.subject)  # type: ignore[attr-defined]

    subscription = await listener.client.subscribe(">", cb=on_message)
    await listener.sync()
    await publisher.client.publish(subject, b"x")
    await publisher.client.publish(marker, b"")
    await publisher.sync()
    await eventually(lambda: marker in got, 10)
    await subscription.unsubscribe()
    return subject in got


async def test_only_the_owner_publishes_its_subjects(
    users: Connections, caplog: pytest.LogCaptureFixture
) -> None:
    orchestrator = await users.as_user("orchestrator")
    router = await users.as_user("router")
    kv_index = await users.as_user("kv-index")
    cli = await users.as_user(CLI_USER)
    with caplog.at_level(logging.WARNING, logger="brixmesh.common.bus"):
        assert await _delivered(cli, orchestrator, "pods.added.chat.chat-0")
        assert not await _delivered(cli, router, "pods.added.chat.chat-0")
        await eventually(
            lambda: 'permissions violation for publish to "pods.added.chat.chat-0"' in caplog.text, 5
        )
        assert await _delivered(cli, kv_index, "kv.events.m.chat-0")
        assert not await _delivered(cli, router, "kv.events.m.chat-0")
        assert not await _delivered(cli, orchestrator, "kv.snapshots.m.chat-0")
        assert await _delivered(cli, router, "router.routing.r1")
        doctor = await users.as_user("gpu-doctor")
        assert await _delivered(cli, doctor, "gpu.decisions.node-a")
        assert not await _delivered(cli, router, "gpu.decisions.node-a")
        assert not await _delivered(cli, kv_index, "router.routing.r1")
        assert not await _delivered(orchestrator, cli, "mesh.heartbeat.router")  # the cli user only reads
        assert not await _delivered(cli, router, "mesh.heartbeat.orchestrator")  # nor impersonates
        assert await _delivered(router, cli, "mesh.ping")
        assert await _delivered(cli, router, "pods.list")


async def test_jetstream_users_provision_streams_but_not_publish_others_events(users: Connections) -> None:
    from brixmesh.common.kv_streams import events_stream

    router = await users.as_user("router")
    await router.ensure_stream(events_stream())  # whichever side starts first provisions it
    kv_index = await users.as_user("kv-index")
    ack = await kv_index.jetstream.publish("kv.events.m.pod-a", b"batch")
    assert ack.stream == "KV_EVENTS"
    with pytest.raises(nats.errors.TimeoutError):  # the router's publish never reaches the stream: no ack
        await router.jetstream.publish("kv.events.m.pod-a", b"forged", timeout=1)
    assert (await router.jetstream.stream_info("KV_EVENTS")).state.messages == 1


def test_every_user_may_heartbeat_and_answer_requests() -> None:
    for user in SERVICE_USERS:
        allowed = publish_allowed(user)
        assert (
            MESH_HEARTBEAT.format(service=user) in allowed
            and "_INBOX.>" in allowed
            and "pods.list" in allowed
        )
    assert publish_allowed(CLI_USER) == ["mesh.ping", "pods.list", "gpu.profiles.*.*", "_INBOX.>"]


async def test_a_service_process_uses_its_credentials(
    auth_nats: NatsServer, passwords: dict[str, str], users: Connections, tmp_path: Path
) -> None:
    from tests.service_proc import service_process

    cli = await users.as_user(CLI_USER)
    beats: list[Heartbeat] = []
    await cli.subscribe(
        MESH_HEARTBEAT.format(service="gpu-doctor"), Heartbeat, lambda _s, beat: beats.append(beat)
    )
    settings = {
        "BRIXMESH_NATS_USER": "gpu-doctor",
        "BRIXMESH_NATS_PASSWORD": passwords["gpu-doctor"],
        "BRIXMESH_HEARTBEAT_INTERVAL_S": "0.2",
    }
    async with service_process("brixmesh.gpu_doctor", auth_nats.url, tmp_path / "gd.log", settings):
        await eventually(lambda: any(beat.ready for beat in beats), 10)

    wrong = subprocess.run(
        [sys.executable, "-m", "brixmesh.gpu_doctor"],
        env={"BRIXMESH_NATS_URL": auth_nats.url, "BRIXMESH_NATS_USER": "gpu-doctor",
             "BRIXMESH_NATS_PASSWORD": "wrong", "BRIXMESH_NATS_CONNECT_TIMEOUT_S": "1",
             "BRIXMESH_LOG_LEVEL": "error", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert wrong.returncode == 3
    lines = [line for line in wrong.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused our credentials" in lines[0], wrong.stderr


def test_deploy_config_is_the_generated_one() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "brixmesh.common.nats_auth"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert (ROOT / "deploy" / "nats" / "nats.conf").read_text() == generated, "run: make docs"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=brixmesh-test-ca",
        cwd=directory,
    )
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=directory,
        )
        (directory / f"{name}.ext").write_text(extension + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=directory,
        )
    return directory


async def test_tls_verifies_the_server_and_presents_our_certificate(tls_files: Path, tmp_path: Path) -> None:
    config = tmp_path / "tls.conf"
    config.write_text(
        f'tls {{ cert_file: "{tls_files}/server.pem", key_file: "{tls_files}/server.key", '
        f'ca_file: "{tls_files}/ca.pem", verify: true }}\n'
    )
    server = NatsServer(tmp_path / "data", config=config).start()
    try:
        ca = str(tls_files / "ca.pem")
        client = {
            "tls_cert_file": str(tls_files / "client.pem"),
            "tls_key_file": str(tls_files / "client.key"),
        }
        with pytest.raises(BusConnectError):  # the server verifies clients: no certificate, no bus
            await Bus.connect(server.url, name="anonymous", timeout_s=2, auth=NatsAuth(tls_ca_file=ca))
        with pytest.raises(BusConnectError):  # and we verify the server: the system CAs do not know it
            await Bus.connect(server.url, name="untrusting", timeout_s=2, auth=NatsAuth(**client))
        with pytest.raises(BusConnectError, match="TLS files"):
            await Bus.connect(server.url, name="x", auth=NatsAuth(tls_ca_file=str(tmp_path / "missing.pem")))
        auth = NatsAuth(tls_ca_file=ca, **client)
        bus = await Bus.connect(server.url, name="trusted", timeout_s=5, auth=auth)
        try:
            assert bus.connected and bus.client.connected_server_version.major >= 2
        finally:
            await bus.close()
    finally:
        server.stop()


async def test_deploy_config_takes_passwords_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What compose and Kubernetes run: deploy/nats/nats.conf with the secrets `--env` generates."""
    generated = subprocess.run(
        [sys.executable, "-m", "brixmesh.common.nats_auth", "--env"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    values = dict(line.split("=", 1) for line in generated.splitlines() if line and not line.startswith("#"))
    assert set(values) == {"BRIXMESH_ADMIN_TOKEN"} | {
        password_variable(u) for u in (*SERVICE_USERS, CLI_USER)
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)  # nats-server inherits them
    server = NatsServer(tmp_path / "data", config=ROOT / "deploy" / "nats" / "nats.conf").start()
    try:
        for user in (*SERVICE_USERS, CLI_USER):
            bus = await Bus.connect(
                server.url,
                name=user,
                timeout_s=3,
                auth=NatsAuth(user=user, password=values[password_variable(user)]),
            )
            await bus.close()
        with pytest.raises(BusConnectError, match="refused our credentials"):
            await Bus.connect(server.url, name="x", timeout_s=2, auth=NatsAuth(user="router", password="p0"))
    finally:
        server.stop()
