"""One generation request as the scheduler and KV cache see it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from brixmesh.engine_sim.textgen import TokenStream


class StopStrings(Protocol):
    """Watches generated text; ``push`` returns the stop string the new token completed, if any."""

    def push(self, token_id: int) -> str | None: ...


class Status(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


@dataclass(eq=False, slots=True)
class SimRequest:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    tokens: TokenStream
    arrival_time: float
    ignore_eos: bool = False
    eos_token_id: int | None = None
    lora_name: str | None = None
    lora_path: str | None = None
    lora_int_id: int | None = None
    cache_salt: str | None = None
    max_tokens_param: int | None = None
    # P/D: prompt KV arriving from a prefill engine; the request is schedulable from ``ready_time`` on.
    remote_prefill: bool = False
    ready_time: float = 0.0
    # P/D prefill: once finished, the blocks stay (under this key) until a decode engine pulls them.
    kv_lease_key: str | None = None
    min_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    stop_text: StopStrings | None = None
    # Called by the engine after every step that produced a token or finished the request.
    on_update: Callable[[SimRequest], None] | None = None

    all_token_ids: list[int] = field(init=False)
    output_token_ids: list[int] = field(default_factory=list, init=False)
    num_computed_tokens: int = field(default=0, init=False)
    num_cached_tokens: int = field(default=-1, init=False)
    num_external_tokens: int = field(default=0, init=False)
    tier_tokens: int = field(default=0, init=False)
    """The KV tier's blocks fetched before admission (``kv_tier``) end at this prompt token ..."""
    tier_from_tokens: int = field(default=0, init=False)
    """... and start at this one (the engine's own prefix cache held those before)."""
    num_preemptions: int = field(default=0, init=False)
    status: Status = field(default=Status.WAITING, init=False)
    finish_reason: str | None = field(default=None, init=False)
    stop_reason: int | str | None = field(default=None, init=False)
    first_scheduled_time: float | None = field(default=None, init=False)
    first_token_time: float | None = field(default=None, init=False)
    last_token_time: float | None = field(default=None, init=False)
    finished_time: float | None = field(default=None, init=False)
    token_times: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    def append_output(self, token_id: int, now: float) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now
        self.token_times.append(now)
