"""Service settings from ``BRIXMESH_*`` environment variables, with one-line errors instead of tracebacks."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from brixmesh.common.kube.api import Api

ENV_PREFIX = "BRIXMESH_"
MIN_ADMIN_TOKEN_CHARS = 16
SECRET_ENV = ("BRIXMESH_ADMIN_TOKEN", "BRIXMESH_NATS_PASSWORD", "BRIXMESH_NATS_TOKEN")
"""A service's secrets: never passed on to the processes it starts (engines)."""


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
    node_name: str = Field(default_factory=socket.gethostname)
    """The node this instance runs on (Kubernetes: the downward API's ``spec.nodeName``); the local
    orchestrator labels its pods with it and the gpu-doctor of the node acts on them."""
    graceful_shutdown_s: float = Field(default=10.0, ge=0)
    admin_token: SecretStr = SecretStr("")
    """Bearer token of every mutating or admin HTTP route; unset locks those routes (401) instead of
    leaving them open."""
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    nats_token: SecretStr = SecretStr("")
    nats_tls_ca_file: Path | None = None
    """Verify the server with this CA (implies TLS); without it, ``tls://`` URLs use the system CAs."""
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    """Client certificate and key, for servers that verify clients (``tls { verify: true }``)."""

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr) -> SecretStr:
        if value and len(value.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters (or unset)")
        return value

    @field_validator("nats_tls_ca_file", "nats_tls_cert_file", "nats_tls_key_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _nats_credentials_consistent(self) -> "ServiceSettings":
        if self.nats_user and self.nats_token:
            raise ValueError(f"give one NATS identity: {ENV_PREFIX}NATS_USER or {ENV_PREFIX}NATS_TOKEN")
        if bool(self.nats_user) != bool(self.nats_password):
            raise ValueError(f"{ENV_PREFIX}NATS_USER and {ENV_PREFIX}NATS_PASSWORD go together")
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError(f"{ENV_PREFIX}NATS_TLS_CERT_FILE and {ENV_PREFIX}NATS_TLS_KEY_FILE go together")
        return self

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        for url in value.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"expected nats://host:port, got {url.strip()!r}")
        return value


class KubernetesResourceSettings(BaseSettings):
    """Where a service that also takes its specs from custom resources finds them (on Kubernetes); a mixin of a
    :class:`ServiceSettings` subclass."""

    model_config = ServiceSettings.model_config
    k8s_namespace: str = ""
    """The resources' namespace; default: the service pod's own."""
    k8s_api_url: str = ""
    """API server URL; default: the service account in a pod, else the kubeconfig."""

    def resource_api(self, program: str) -> tuple[Api, str]:
        """The API client (not opened yet) and the resources' namespace; exits with one line naming
        ``program`` when no namespace is known. Imports the Kubernetes client (a second or so)."""
        from brixmesh.common.kube.api import Api, resolved_namespace

        try:
            return Api(self.k8s_api_url), resolved_namespace(self.k8s_namespace)
        except ValueError as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None


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
        message = error["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        problems.append(f"{prefix}{field.upper()}: {message}" if field else message)
    return "invalid setting " + "; ".join(problems)


def load_or_exit(cls: type[S], program: str) -> S:
    """For ``main()`` functions: a bad setting prints one line and exits with status 2."""
    try:
        return load_settings(cls)
    except SettingsError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
