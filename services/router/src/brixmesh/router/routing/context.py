"""What a scorer may know about one request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

ApiKind = Literal[
    "chat", "completions", "embeddings", "responses", "tokenize", "detokenize", "score", "rerank", "pooling",
    "classify",
]
Tokenizer = Callable[["RequestContext"], Awaitable[Sequence[int] | None]]


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


_UNSET: Any = object()


@dataclass(slots=True, eq=False)
class RequestContext:
    """One request as the router sees it.

    ``model`` is the name the client asked for; when it is an adapter, ``adapter`` is that name and
    ``base_model`` the model the adapter belongs to (else ``adapter`` is None and ``base_model == model``).
    The prompt is in exactly one of ``messages`` (chat), ``prompt_text`` or ``prompt_token_ids``.
    """

    request_id: str
    """The router's own id of this request, unique: the key of its load and KV bookkeeping."""
    api: ApiKind
    model: str
    body: Mapping[str, Any]
    base_model: str = ""
    adapter: str | None = None
    messages: list[Any] | None = None
    prompt_text: str | None = None
    prompt_token_ids: list[int] | None = None
    user: str | None = None
    session_id: str | None = None
    cache_salt: str | None = None
    """vLLM's ``cache_salt``: requests with different salts never share cached blocks."""
    stream: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    client_request_id: str = ""
    """The client's ``x-request-id``, else ``request_id``: echoed back, never a key (clients reuse ids)."""
    tokenizer: Tokenizer | None = None
    prefix_hashes: list[int] | None = None
    """Approximate prefix block hashes, set by the prefix-cache scorer; shared with other router replicas."""
    matches_only_shared_prefix: bool = False
    """Set by the ``kv-aware`` scorer: no pod holds more of this prompt than a prefix other requests share
    too (a system prompt), or no pod holds any of it. Any pod can then serve it at the cost of computing
    that prefix once, so the load guard balances recent request counts with it (``LoadGuard.lead_penalties``);
    a request continuing its own history is left where its cache is."""
    _token_ids: Any = _UNSET
    _routing_text: str | None = None

    @property
    def routing_text(self) -> str:
        """The prompt as one string (chat messages flattened role by role): what approximate prefix matching
        hashes. Token-id prompts are rendered as their decimal ids."""
        if self._routing_text is None:
            self._routing_text = prompt_as_text(self.messages, self.prompt_text, self.prompt_token_ids)
        return self._routing_text

    async def token_ids(self) -> Sequence[int] | None:
        """Prompt token ids: given by the client, else from ``tokenizer`` (computed once), else None."""
        if self.prompt_token_ids is not None:
            return self.prompt_token_ids
        if self._token_ids is _UNSET:
            self._token_ids = await self.tokenizer(self) if self.tokenizer is not None else None
        return self._token_ids

    def estimated_prompt_tokens(self) -> int:
        """Cheap estimate (4 characters per token) for limits and latency scoring before any tokenizer."""
        if self.prompt_token_ids is not None:
            return len(self.prompt_token_ids)
        return max(1, len(self.routing_text) // 4)

    def max_output_tokens(self, default: int = 128) -> int:
        value = self.body.get("max_completion_tokens") or self.body.get("max_tokens")
        return value if isinstance(value, int) and value > 0 else default


def prompt_as_text(messages: list[Any] | None, text: str | None, token_ids: list[int] | None) -> str:
    if messages is not None:
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"<{message.get('role', '')}>{content if isinstance(content, str) else ''}")
        return "".join(parts)
    if text is not None:
        return text
    if token_ids is not None:
        return ",".join(map(str, token_ids))
    return ""
