import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from brixmesh.common.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """Settings of the router service (environment variables ``BRIXMESH_*``)."""

    port: int = Field(default=8000, ge=0, le=65535)
    endpoints_file: Path | None = None
    """Static endpoints (JSON) for standalone use; pods from NATS are added to them."""
    models: Annotated[list[str], NoDecode] = []
    """Models the router accepts even while no pod serves them (scale from zero); pods add theirs."""
    default_strategy: str = "kv-aware:3,least-request:2"
    """Chosen by `brixmesh bench compare`: best throughput and p90 TTFT of our strategies (bench/README.md)."""
    model_strategies: dict[str, str] = {}
    """Per-model strategy, e.g. ``{"tiny-llama": "prefix-cache:3,least-request:2"}`` (JSON in the env)."""
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_retries: int = Field(default=2, ge=0)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    """Longest wait for the upstream's next bytes (first byte included): beyond it, 504 or an SSE error."""
    request_timeout_s: float = Field(default=3600.0, gt=0)
    """Overall deadline of one request from its first upstream attempt to its last byte, retries included
    (the scale-from-zero hold is bounded apart, by ``cold_start_wait_s``). Past it a non-streamed request
    gets 504; a stream, even one still producing tokens, ends with an SSE error event (type ``timeout``)."""
    unhealthy_s: float = Field(default=5.0, ge=0)
    """How long a pod that refused a connection stays out of routing."""
    cold_start_wait_s: float = Field(default=30.0, ge=0)
    """How long a request for a known model with no ready pod is held for one to become ready."""
    max_held_requests: int = Field(default=1024, ge=0)
    """Requests held at once for scale from zero; more get 503 with Retry-After at once."""
    retry_after_s: int = Field(default=5, ge=1)
    inflight_ttl_s: float = Field(default=900.0, gt=0)
    recent_half_life_s: float = Field(default=30.0, gt=0)
    """Half-life of the recent request counts the load guard balances (see ``lead_gain``)."""
    lead_gain: float = Field(default=20.0, ge=0)
    """How hard the load guard steers a request whose cache affinity is only for a shared prefix (a system
    prompt) away from pods sent more than their share lately, for strategies with ``kv-aware``; 0 turns it
    off. A leading pod's total loses ``lead_gain`` x the affinity weight x its excess over the allowance
    (``lead_tolerance`` above the mean, plus ``lead_slack`` requests), but keeps the affinity the best other
    pod has."""
    lead_tolerance: float = Field(default=0.1, ge=0)
    """Also the busiest/mean request share the lead leaves alone in a long run."""
    lead_slack: float = Field(default=4.0, ge=0)
    stats_interval_s: float = Field(default=1.0, gt=0)
    prefix_block_chars: int = Field(default=64, gt=0)
    api_keys: Annotated[list[str], NoDecode] = []
    """Accepted Bearer keys; empty means no authentication."""
    redis_url: str = ""
    rpm_limit: int = Field(default=0, ge=0)
    """Requests per minute per API key and per user (0: unlimited)."""
    tpm_limit: int = Field(default=0, ge=0)
    """Tokens (prompt + completion, from usage) per minute per API key and per user (0: unlimited)."""
    limits_policy: Literal["fail-open", "fail-closed"] = "fail-open"
    """What happens to requests when Redis cannot be reached."""
    otlp_endpoint: str = ""
    """OTLP/HTTP collector base URL for request traces (``/v1/traces`` is appended); empty: the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``; none set: tracing off."""

    @field_validator("api_keys", "models", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _limits_need_redis(self) -> "RouterSettings":
        if (self.rpm_limit or self.tpm_limit) and not self.redis_url:
            raise ValueError(
                "BRIXMESH_RPM_LIMIT/BRIXMESH_TPM_LIMIT are counted in Redis: set BRIXMESH_REDIS_URL too "
                "(or set the limits to 0)"
            )
        return self
