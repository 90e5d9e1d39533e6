"""Service settings from ``BRIXMESH_*`` environment variables, with one-line errors instead of tracebacks."""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BRIXMESH_"


class ServiceSettings(BaseSettings):
    """Settings every service shares; each service subclasses it with its own fields."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    nats_connect_timeout_s: float = Field(default=5.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    lease_intervals: float = Field(default=3.0, ge=1.5)
    """What this service announces (heartbeats, the orchestrator's pods) is held by others for this many
    announce intervals: missing one announcement is fine, silence for longer means gone."""
    instance_id: str = ""
    graceful_shutdown_s: float = Field(default=10.0, ge=0)

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        for url in value.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"expected nats://host:port, got {url.strip()!r}")
        return value


class SettingsError(Exception):
    """A setting has a bad value; ``str()`` is one line naming the environment variable."""


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(cls, exc)) from None


def describe_validation_error(cls: type[BaseSettings], exc: ValidationError) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "?"
        problems.append(f"{prefix}{field.upper()}: {error['msg']}")
    return "invalid setting " + "; ".join(problems)


def load_or_exit(cls: type[S], program: str) -> S:
    """For ``main()`` functions: a bad setting prints one line and exits with status 2."""
    try:
        return load_settings(cls)
    except SettingsError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
