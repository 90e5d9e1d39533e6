"""Fault knobs, settable from CLI flags and at runtime through ``GET/POST /admin/faults``."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

# llm-d-inference-sim's failure types: (HTTP status, OpenAI error type, message).
FAILURE_TYPES: dict[str, tuple[int, str, str]] = {
    "rate_limit": (429, "RateLimitError", "Rate limit reached for the simulated engine."),
    "invalid_api_key": (401, "AuthenticationError", "Incorrect API key provided."),
    "context_length": (
        400,
        "BadRequestError",
        "This model's maximum context length was exceeded (injected).",
    ),
    "server_error": (503, "ServiceUnavailableError", "The server is overloaded or not ready yet (injected)."),
    "invalid_request": (400, "BadRequestError", "Invalid request (injected)."),
    "model_not_found": (404, "NotFoundError", "The model does not exist (injected)."),
}


@dataclass(slots=True)
class Faults:
    error_rate: float = 0.0
    error_types: list[str] | None = None
    crash_after_s: float | None = None
    hang_after_s: float | None = None
    hang: bool = False
    slowdown: float = 1.0
    corrupt_output: bool = False
    """Silent data corruption: generated tokens differ from a healthy engine's for the same prompt and seed
    (what a gpu-doctor's temperature-0 canary prompts catch)."""
    stall_after_tokens: int | None = None
    stall_seconds: float = 0.0
    disconnect_after_tokens: int | None = None
    kv_events_drop_prob: float = 0.0
    kv_events_reorder: bool = False
    lora_load_delay_s: float = 0.0
    lora_load_fail: bool = False
    metrics_delay_s: float = 0.0
    metrics_error_rate: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if not 0.0 <= self.kv_events_drop_prob <= 1.0:
            raise ValueError("kv_events_drop_prob must be between 0 and 1")
        if not 0.0 <= self.metrics_error_rate <= 1.0:
            raise ValueError("metrics_error_rate must be between 0 and 1")
        if self.slowdown <= 0:
            raise ValueError("slowdown must be > 0")
        for name in self.error_types or []:
            if name not in FAILURE_TYPES:
                raise ValueError(f"unknown error type {name!r}; choose from {', '.join(FAILURE_TYPES)}")

    def update(self, changes: dict[str, Any]) -> None:
        """Applies a partial update atomically: on any invalid field nothing changes."""
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        candidate = Faults(**{**asdict(self), **changes})
        for name in known:
            setattr(self, name, getattr(candidate, name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def pick_error(self, rng: random.Random) -> tuple[int, str, str] | None:
        if self.error_rate <= 0 or rng.random() >= self.error_rate:
            return None
        names = self.error_types or list(FAILURE_TYPES)
        return FAILURE_TYPES[rng.choice(names)]
