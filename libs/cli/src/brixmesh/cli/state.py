"""Where a running embedded mesh records itself, so that ``status`` and ``tap`` find its NATS server, and
the secrets it generates (admin token, NATS passwords: files readable by their owner only)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import msgspec

from brixmesh.common.bus import NatsAuth
from brixmesh.common.nats_auth import CLI_USER
from brixmesh.common.settings import ServiceSettings, load_settings


class MeshRecord(msgspec.Struct, kw_only=True):
    pid: int
    nats_url: str
    openai_base_url: str
    services: dict[str, str]
    """service name -> HTTP URL"""


def default_state_dir() -> Path:
    return Path(os.environ.get("BRIXMESH_STATE_DIR", ".brixmesh"))


def record_path(state_dir: Path) -> Path:
    return state_dir / "mesh.json"


def write_record(state_dir: Path, record: MeshRecord) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    record_path(state_dir).write_bytes(msgspec.json.encode(record))


def read_record(state_dir: Path) -> MeshRecord | None:
    try:
        record = msgspec.json.decode(record_path(state_dir).read_bytes(), type=MeshRecord)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return None
    return record


def secrets_dir(state_dir: Path) -> Path:
    directory = state_dir / "secrets"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def write_secret(path: Path, text: str) -> None:
    """Create or replace ``path`` readable and writable by its owner only (never briefly wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


def admin_token_path(state_dir: Path) -> Path:
    return state_dir / "secrets" / "admin-token"


def admin_token(state_dir: Path) -> str:
    """The mesh's admin token: the one kept in the state directory, created on first use."""
    path = admin_token_path(state_dir)
    secrets_dir(state_dir)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        write_secret(path, token + "\n")
    return token


def nats_passwords_path(state_dir: Path) -> Path:
    return state_dir / "secrets" / "nats-passwords.json"


def write_nats_passwords(state_dir: Path, passwords: dict[str, str]) -> None:
    secrets_dir(state_dir)
    write_secret(nats_passwords_path(state_dir), json.dumps(passwords))


def resolve_nats_auth(explicit_url: str | None, state_dir: Path) -> NatsAuth:
    """The ``cli`` user (pings, reads, GPU profiles) of the running mesh's own NATS server; for any other server, the
    ``BRIXMESH_NATS_*`` credential variables."""
    record = read_record(state_dir)
    if record is not None and explicit_url in (None, record.nats_url):
        try:
            password = json.loads(nats_passwords_path(state_dir).read_text())[CLI_USER]
        except (OSError, ValueError, KeyError):
            password = ""
        if password:
            return NatsAuth(user=CLI_USER, password=password)
    return NatsAuth.from_settings(load_settings(ServiceSettings))


def resolve_nats_url(explicit: str | None, state_dir: Path) -> str | None:
    """``--nats-url``, else the running mesh's, else ``BRIXMESH_NATS_URL``."""
    if explicit:
        return explicit
    record = read_record(state_dir)
    if record is not None:
        return record.nats_url
    return os.environ.get("BRIXMESH_NATS_URL")
