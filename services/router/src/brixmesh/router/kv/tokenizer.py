"""Prompt -> token ids exactly as the engine computes them, so request blocks hash like the engine's events.

Completions: ``tokenizer.encode(prompt)`` with special tokens (BOS). Chat: the model's chat template with the
generation prompt, then ``encode`` without special tokens (the template writes BOS). A Hugging Face tokenizer
directory (``tokenizer.json`` + ``tokenizer_config.json``, optional ``chat_template.jinja``) is loaded offline
per model; models without one fall back to an engine's ``POST /tokenize``, cached.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

# Longer prompts are tokenized in a thread (the tokenizers library releases the GIL).
_INLINE_CHARS = 4096
_REMOTE_TIMEOUT_S = 2.0


class TokenizerError(ValueError):
    """The tokenizer directory or the prompt cannot be used; ``str()`` is one line."""


def _special(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _raise(message: str) -> None:
    raise TemplateError(message)


def flatten_content(content: Any) -> Any:
    """OpenAI content parts -> the plain string templates expect (text parts joined by newlines, as vLLM)."""
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and "text" in part)
    return content


class LocalTokenizer:
    def __init__(self, directory: Path) -> None:
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerError(f"no tokenizer.json in {directory}")
        self.directory = directory
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template_file = directory / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        self.bos_token = _special(config.get("bos_token")) or ""
        self.eos_token = _special(config.get("eos_token")) or ""
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(template) if isinstance(template, str) else None

    def encode_prompt(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=True).ids

    def encode_chat(self, messages: list[Any]) -> list[int]:
        if self._template is None:
            raise TokenizerError(f"tokenizer in {self.directory} has no chat template")
        prepared = [
            {**message, "content": flatten_content(message.get("content"))} if isinstance(message, dict) else message
            for message in messages
        ]
        try:
            text = self._template.render(
                messages=prepared, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token
            )
        except TemplateError as exc:
            raise TokenizerError(f"chat template failed: {exc}") from None
        return self._tok.encode(text, add_special_tokens=False).ids


class PromptTokenizer:
    """Token ids of a prompt for a model: local tokenizer directory if configured, else an engine's
    ``/tokenize`` (answers cached, ``cache_size`` entries)."""

    def __init__(
        self,
        directories: Mapping[str, Path],
        engine_url: Callable[[str], str | None],
        *,
        cache_size: int = 4096,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._directories = dict(directories)
        self._local: dict[str, LocalTokenizer] = {}
        self._engine_url = engine_url
        self._cache: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
        self._cache_size = cache_size
        self._client = client
        self.remote_calls = 0
        self.remote_failures = 0

    def local(self, model: str) -> LocalTokenizer | None:
        found = self._local.get(model)
        if found is None and model in self._directories:
            found = self._local[model] = LocalTokenizer(self._directories[model])
        return found

    async def tokens(self, model: str, *, prompt: str | None = None, messages: list[Any] | None = None) -> list[int] | None:
        """Token ids, or None when neither a local tokenizer nor an engine can tell."""
        local = self.local(model)
        if local is not None:
            if messages is not None:
                size = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
                if size <= _INLINE_CHARS:
                    return local.encode_chat(messages)
                return await asyncio.to_thread(local.encode_chat, messages)
            if prompt is not None:
                if len(prompt) <= _INLINE_CHARS:
                    return local.encode_prompt(prompt)
                return await asyncio.to_thread(local.encode_prompt, prompt)
            return None
        return await self._remote(model, prompt, messages)

    async def _remote(self, model: str, prompt: str | None, messages: list[Any] | None) -> list[int] | None:
        if prompt is None and messages is None:
            return None
        body: dict[str, Any] = {"model": model}
        if messages is not None:
            body["messages"] = messages
        else:
            body["prompt"] = prompt
        key = (model, json.dumps(body, sort_keys=True, separators=(",", ":")))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        url = self._engine_url(model)
        if url is None:
            return None
        self.remote_calls += 1
        try:
            client = self._client or httpx.AsyncClient()
            try:
                response = await client.post(f"{url}/tokenize", json=body, timeout=_REMOTE_TIMEOUT_S)
            finally:
                if self._client is None:
                    await client.aclose()
            response.raise_for_status()
            tokens = response.json()["tokens"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            self.remote_failures += 1
            return None
        self._cache[key] = tokens
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tokens
