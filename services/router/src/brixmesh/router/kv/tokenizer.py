"""Prompt -> token ids exactly as the engine computes them, so request blocks hash like the engine's events.

Completions: ``tokenizer.encode(prompt)`` with special tokens (BOS). Chat: the model's chat template with the
generation prompt, then ``encode`` without special tokens (the template writes BOS). A Hugging Face tokenizer
directory (``tokenizer.json`` + ``tokenizer_config.json``, optional ``chat_template.jinja``) is loaded offline
per model; models without one fall back to an engine's ``POST /tokenize``, cached.

Chat turns reuse the previous turn's tokens: a conversation's next request repeats its earlier messages, and
the template's text for them is a prefix of the new text. Encoding is most of the router's CPU per request,
so each chat prompt's token ids up to its last added (special) token are kept, keyed by a digest of its
messages (LRU within a byte budget), and a later request whose messages start with those messages encodes only the rest.
Added tokens split the text before the tokenizer's model sees it, so ids up to such a token never depend on
what follows; the first reuses of each tokenizer are still checked against a full encode, and a mismatch
turns reuse off for that tokenizer (a warning says so).

A chat request that continues a kept conversation can be routed from that turn's ids alone
(:meth:`LocalTokenizer.turn_prefix`: no template render, no encoding); the rest is tokenized once the
request is on its way to its pod (:meth:`TurnPrefix.complete`), which also checks that the template really
renders the earlier messages as before. The first time it does not, routing from kept turns stops for that
tokenizer. A continued turn adding little text is not tokenized at all (:meth:`TurnPrefix.sent`): the
conversation's next turn is routed from the same kept turn, crediting the pod this one went to, and the turn
that brings the new text since the kept turn past ``LAZY_TURN_CHARS`` is tokenized and kept instead.

Byte-level BPE tokenizers (most current models) encode through tiktoken (:mod:`.fast_bpe`), checked
against the Hugging Face tokenizer on a sample.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from xxhash import xxh3_64_intdigest

from brixmesh.router.kv.fast_bpe import CheckedEncoder, special_tokens_around
from brixmesh.router.kv.hashing import TOKEN_TYPECODE

log = logging.getLogger(__name__)

# Longer texts are tokenized in a thread (the tokenizers library releases the GIL).
_INLINE_CHARS = 4096
_REMOTE_TIMEOUT_S = 2.0
_CHECKED_REUSES = 8
"""Reuses of a tokenizer's cached chat prefixes checked against a full encode before they are trusted."""
_TURN_ROUTING_AFTER = 16
"""Verified reuses (the render started with the kept text) before requests are routed from kept turns."""
_TOKENS_PER_CHAR = 0.3
"""First guess of tokens per character of new message content (learned per tokenizer as turns complete)."""
_FRAMING_CHARS = 24
"""Characters a template adds around each message (role markers, separators), counted with its content."""
LAZY_TURN_CHARS = 2048
"""New text since its kept turn (framing included) from which a continued turn is tokenized once sent; below
it the turn is only remembered (a render and an encode fewer per turn, the encoding done later in one go). It
stays under ``_INLINE_CHARS``, so a conversation's next turn is still routed from the kept turn."""
_SENT_TURNS_LIMIT = 16384
CHAT_PREFIX_CACHE_BYTES = 64 << 20
_message_json = msgspec.json.Encoder()


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


@dataclass(slots=True)
class KeptTurn:
    """Token ids of a chat prompt's text up to (not including) its last added token, kept for the
    conversation's next turn."""

    text: str
    ids: array
    tail_tokens: int
    """Tokens of the prompt after ``ids`` (the generation prompt, mostly): computed by the pod that served it."""
    hashes: dict[tuple[int, int], list[int]] | None = None
    """(block size, chain seed) -> hashes of the full blocks of ``ids``, kept by the KV scorer: a kept turn
    is hashed once however many requests continue it."""
    served_by: str | None = None
    """The pod the request this turn was kept from went to (set by the KV scorer when it is routed)."""
    shared: bool = False
    """A system prompt kept on its own (:meth:`LocalTokenizer._keep_system`): the start of many conversations,
    the history of none."""

    @property
    def size(self) -> int:
        return sys.getsizeof(self.text) + self.ids.itemsize * len(self.ids)


class ChatTemplate:
    """A compiled chat template, rendered as ``Template.render`` does but with the environment's globals merged
    once: ``render`` merges them into every call's context (half of a short chat's render time)."""

    def __init__(self, template: Template) -> None:
        self._template = template
        self._globals = dict(template.globals)

    def render(self, variables: dict[str, Any]) -> str:
        template = self._template
        environment = template.environment
        context = environment.context_class(
            environment, {**self._globals, **variables}, template.name, template.blocks
        )
        return "".join(template.root_render_func(context))


class ChatIds(array):
    """A chat prompt's token ids (packed u32) with the kept earlier turn they start with (``prefix``) and what
    was kept of them for the conversation's next turn (``kept``): whoever hashes the ids hashes only the blocks
    after ``prefix.hashes`` and leaves the kept blocks' hashes on ``kept.hashes``."""

    __slots__ = ("prefix", "kept")
    prefix: KeptTurn | None
    kept: KeptTurn | None


@dataclass(slots=True)
class ChatEncoding:
    """A rendered chat prompt and the cached earlier turn its tokenization starts from."""

    text: str
    key: int
    """Digest of the messages: where this prompt's own prefix is kept for the next turn."""
    prefix: KeptTurn | None
    """The longest cached earlier turn this text starts with: only ``text[len(prefix.text):]`` is encoded."""
    kept: KeptTurn | None = None
    """What :meth:`LocalTokenizer.finish_chat` kept of this prompt for the conversation's next turn."""
    system: tuple[Any, int] | None = None
    """With no ``prefix``: the first message and its digest when it is a system prompt, which
    :meth:`LocalTokenizer.finish_chat` keeps on its own first and continues."""

    @property
    def remaining_chars(self) -> int:
        return len(self.text) - (len(self.prefix.text) if self.prefix is not None else 0)


@dataclass(slots=True)
class SentTurn:
    """A continued turn that was sent without being tokenized: its conversation's next turn is routed from the
    same kept turn (``prefix_key``), crediting ``served_by`` with this prompt and the answer that follows."""

    prefix_key: int
    new_chars: int
    """Characters of this prompt's messages after the kept turn, framing included."""
    prompt_tokens: int
    """This prompt's estimated token count."""
    served_by: str


@dataclass(slots=True, eq=False)
class TurnPrefix:
    """A chat request that continues a kept turn: that turn's ids (what routing scores), an estimate of the
    whole prompt's length, what the conversation's last pod computed of it, and :meth:`sent` once the request
    is on its way."""

    prefix: KeptTurn
    prefix_key: int
    """The digest ``prefix`` is kept under."""
    estimated_tokens: int
    tokenizer: LocalTokenizer
    messages: list[Any]
    """The request's messages."""
    digests: list[int]
    """Their :func:`message_digests`."""
    new_chars: int
    """Characters of the messages after the kept turn, framing included (what ``estimated_tokens`` adds)."""
    last_pod: str | None
    """The pod that served the conversation's previous turn (when known)."""
    computed_tokens: int
    """Leading tokens of this prompt that ``last_pod`` computed: its own prompt and the answer right after it
    (estimated where they were not tokenized)."""
    served_by: str | None = None
    """The pod this request went to, passed on to what is kept or remembered of it."""
    kept: KeptTurn | None = None
    """Once :meth:`complete` ran: what was kept of this prompt for the next turn (its ids start the prompt's)."""

    @property
    def ids(self) -> array:
        return self.prefix.ids

    def sent(self, pod: str) -> ChatIds | None:
        """The request went to ``pod``: the prompt's exact ids when this turn is tokenized now (its new text
        reached ``LAZY_TURN_CHARS``), else None (the turn is remembered for the conversation's next one)."""
        self.served_by = pod
        if self.new_chars >= LAZY_TURN_CHARS:
            return self.complete()
        self.tokenizer.remember_turn(self, pod)
        return None

    def complete(self) -> ChatIds:
        """The prompt's exact ids (render, encode what follows the kept turn, keep this turn for the next)."""
        return self.tokenizer.complete_turn(self)


def message_digests(messages: list[Any]) -> list[int]:
    """``digests[k]``: a digest of ``messages[: k + 1]`` (chained, so every prefix costs one hash)."""
    digests = []
    digest = 0
    for message in messages:
        digest = xxh3_64_intdigest(_message_json.encode(message), digest)
        digests.append(digest)
    return digests


class LocalTokenizer:
    def __init__(self, directory: Path, prefix_cache_bytes: int = CHAT_PREFIX_CACHE_BYTES) -> None:
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerError(f"no tokenizer.json in {directory}")
        self.directory = directory
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self._encoder = CheckedEncoder(self._tok, json.loads(tokenizer_file.read_text()), str(directory))
        self._before, self._after = special_tokens_around(self._tok)
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template_file = directory / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        self.bos_token = _special(config.get("bos_token")) or ""
        self.eos_token = _special(config.get("eos_token")) or ""
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = ChatTemplate(env.from_string(template)) if isinstance(template, str) else None
        self._added = {
            token_id: token.content
            for token_id, token in self._tok.get_added_tokens_decoder().items() if token.content
        }  # fmt: skip
        self._prefixes: OrderedDict[int, KeptTurn] = OrderedDict()
        self._sent: OrderedDict[int, SentTurn] = OrderedDict()
        """Digest of a sent turn's messages -> what routes its conversation's next turn (oldest first)."""
        self._prefix_cache_bytes = prefix_cache_bytes
        self.prefix_bytes = 0
        """Text and token ids kept for next turns (at most ``prefix_cache_bytes``; sizes as Python counts)."""
        self._lock = threading.Lock()  # long prompts are encoded in threads
        self._checks_left = _CHECKED_REUSES
        self.reuse = prefix_cache_bytes > 0 and bool(self._added)
        """False once a reused prefix disagreed with a full encode (or the tokenizer has no added tokens)."""
        self._verified_reuses = 0
        self.turn_routing = True
        """False once the template rendered a kept conversation's earlier messages differently."""
        self._tokens_per_char = _TOKENS_PER_CHAR
        self.turns_routed = 0
        self.turns_remembered = 0
        self.keeps_system_prompts = True
        """False once the template did not render a system message alone as the start of a conversation."""
        self.prefix_reuses = 0
        self.prefix_misses = 0

    @property
    def fast(self) -> bool:
        """Encoding through tiktoken (its checks have found no difference so far)."""
        return self._encoder.fast

    def encode_prompt(self, text: str) -> array:
        ids = array(TOKEN_TYPECODE, self._before)
        ids.extend(self._encoder.encode(text))
        ids.extend(self._after)
        return ids

    def encode_chat(self, messages: list[Any]) -> array:
        return self.finish_chat(self.plan_chat(messages))

    def plan_chat(self, messages: list[Any]) -> ChatEncoding:
        """Render the template and find the longest cached earlier turn: the cheap half of :meth:`encode_chat`,
        so the caller can run :meth:`finish_chat` (the encoding) in a thread when much text remains."""
        return self._plan(messages, None)

    def _plan(self, messages: list[Any], digests: list[int] | None) -> ChatEncoding:
        """:meth:`plan_chat` (``digests``: the messages', if computed already)."""
        if self._template is None:
            raise TokenizerError(f"tokenizer in {self.directory} has no chat template")
        try:
            text = self._template.render(
                {"messages": _prepared(messages), "add_generation_prompt": True, "bos_token": self.bos_token,
                 "eos_token": self.eos_token}
            )  # fmt: skip
        except Exception as exc:  # TemplateError, or messages the template cannot handle (a None content + str)
            raise TokenizerError(f"chat template failed: {exc}") from None
        if not self.reuse:
            return ChatEncoding(text, 0, None)
        if digests is None:
            try:
                digests = message_digests(messages)
            except (TypeError, ValueError):  # not JSON-encodable: nothing to key a cache entry by
                return ChatEncoding(text, 0, None)
        prefix = None
        with self._lock:
            for digest in reversed(digests[:-1]):
                found = self._prefixes.get(digest)
                if found is None:
                    continue
                if text.startswith(found.text):
                    self._prefixes.move_to_end(digest)
                    prefix = found
                    self._verified_reuses += 1
                    break
                self._stop_turn_routing()  # same earlier messages, other text: the template looks ahead
        plan = ChatEncoding(text, digests[-1], prefix)
        first = messages[0]
        if (
            prefix is None and self.keeps_system_prompts and len(messages) > 1
            and isinstance(first, dict) and first.get("role") == "system"
        ):  # fmt: skip
            plan.system = (first, digests[0])
        return plan

    def _keep_system(self, message: Any, key: int, text: str) -> KeptTurn | None:
        """Keep a conversation's system prompt on its own (under ``key``, its digest), if the template renders
        it alone as the start of ``text``: conversations sharing it then encode only what follows it, and
        their first turns are routed from it like later turns. The first time the template cannot, it is
        not asked again (each try costs a render and an encode of the system prompt)."""
        if self._template is None:
            return None
        try:
            rendered = self._template.render(
                {"messages": _prepared([message]), "add_generation_prompt": False,
                 "bos_token": self.bos_token, "eos_token": self.eos_token}
            )  # fmt: skip
        except Exception:  # a template that wants more than a system message
            rendered = None
        if rendered is None or not text.startswith(rendered):
            self.keeps_system_prompts = False
            return None
        ids = self._encoder.encode(rendered)
        index, cut = self._last_added(ids, rendered)
        if cut <= 0:
            return None
        kept = KeptTurn(rendered[:cut], array(TOKEN_TYPECODE, ids[:index]), len(ids) - index, shared=True)
        return kept if self._store(key, kept) else None

    def turn_prefix(self, messages: list[Any]) -> TurnPrefix | None:
        """The kept turn ``messages`` continue, to route from before the rest is tokenized; None when there
        is none, when routing from kept turns is off or not yet earned, or when much new text follows."""
        if not (self.reuse and self.turn_routing and self._verified_reuses >= _TURN_ROUTING_AFTER):
            return None
        try:
            digests = message_digests(messages)
        except (TypeError, ValueError):
            return None
        sent = None
        with self._lock:
            for index in range(len(digests) - 2, -1, -1):
                key = digests[index]
                found = self._prefixes.get(key)
                if found is None:
                    sent = self._sent.get(key)
                    if sent is None:
                        continue
                    key = sent.prefix_key
                    found = self._prefixes.get(key)
                    if found is None:  # evicted: an older kept turn may still be there
                        sent = None
                        continue
                self._prefixes.move_to_end(key)
                break
            else:
                return None
        if sent is not None:
            new_chars, last_pod, computed = sent.new_chars, sent.served_by, sent.prompt_tokens
        else:  # a shared system prompt was computed by many pods, for other conversations
            last_pod = None if found.shared else found.served_by
            new_chars, computed = 0, len(found.ids) + found.tail_tokens
        answer_chars = 0
        answering = True
        for message in messages[index + 1 :]:
            if not isinstance(message, dict):
                message = {}
            content, role = flatten_content(message.get("content")), message.get("role")
            chars = len(content) if isinstance(content, str) else 0
            new_chars += _FRAMING_CHARS + chars
            answering = answering and role == "assistant"
            if answering:  # its framing before the content is the kept turn's generation prompt
                answer_chars += chars
        if new_chars > _INLINE_CHARS:  # a long new text is tokenized in a thread, before routing
            return None
        estimated = len(found.ids) + int(new_chars * self._tokens_per_char) + 1
        self.turns_routed += 1
        computed += int(answer_chars * self._tokens_per_char)
        return TurnPrefix(found, key, estimated, self, messages, digests, new_chars, last_pod, computed)

    def remember_turn(self, turn: TurnPrefix, pod: str) -> None:
        """``turn`` went to ``pod`` untokenized: its conversation's next turn continues from its kept turn."""
        remembered = SentTurn(turn.prefix_key, turn.new_chars, turn.estimated_tokens, pod)
        with self._lock:
            self._sent[turn.digests[-1]] = remembered
            self._sent.move_to_end(turn.digests[-1])
            if len(self._sent) > _SENT_TURNS_LIMIT:
                self._sent.popitem(last=False)
        self.turns_remembered += 1

    def complete_turn(self, turn: TurnPrefix) -> ChatIds:
        plan = self._plan(turn.messages, turn.digests)
        ids = self.finish_chat(plan)
        turn.kept = plan.kept
        if plan.kept is not None:
            plan.kept.served_by = turn.served_by
        kept = turn.prefix.ids
        if not (plan.prefix is turn.prefix or ids[: len(kept)] == kept):  # the template looks ahead
            self._stop_turn_routing()
        elif turn.new_chars:
            observed = (len(ids) - len(kept)) / turn.new_chars
            self._tokens_per_char += 0.1 * (observed - self._tokens_per_char)
        return ids

    def _stop_turn_routing(self) -> None:
        if self.turn_routing:
            self.turn_routing = False
            log.warning(
                "chat template in %s renders earlier messages differently as a conversation grows: requests "
                "are no longer routed from kept turns", self.directory,
            )

    def finish_chat(self, plan: ChatEncoding) -> ChatIds:
        """The prompt's token ids, packed (``array`` of u32: hashing reads them without a conversion)."""
        prefix = plan.prefix
        fresh = False
        if prefix is None and plan.system is not None:
            prefix = plan.prefix = self._keep_system(*plan.system, plan.text)
            fresh = prefix is not None
        if prefix is None:
            new_ids = self._encoder.encode(plan.text)
            ids = ChatIds(TOKEN_TYPECODE, new_ids)
            self.prefix_misses += 1
        else:
            new_ids = self._encoder.encode(plan.text[len(prefix.text) :])
            ids = ChatIds(TOKEN_TYPECODE, prefix.ids)
            ids.fromlist(new_ids)  # about half of extend()'s time
            if self._checks_left > 0 and not self._checked(plan.text, ids):
                ids = ChatIds(TOKEN_TYPECODE, self._tok.encode(plan.text, add_special_tokens=False).ids)
                prefix = None
            elif fresh:  # its system prompt was new: encoded in full, in two parts
                self.prefix_misses += 1
            else:
                self.prefix_reuses += 1
        ids.prefix = prefix
        if plan.key and self.reuse:
            self._keep(plan, new_ids, ids)
        ids.kept = plan.kept
        return ids

    def _checked(self, text: str, ids: array) -> bool:
        self._checks_left -= 1
        if self._tok.encode(text, add_special_tokens=False).ids == ids.tolist():
            return True
        self.reuse = False
        log.warning(
            "tokenizer in %s does not split at its added tokens as expected: chat prefix reuse is off",
            self.directory,
        )
        return False

    def _keep(self, plan: ChatEncoding, new_ids: list[int], ids: array) -> None:
        """Keep ``plan.text`` up to its last added token (and those ids) for the conversation's next turn;
        ``new_ids`` are the ids of the text after the cached prefix it started from, ending ``ids``."""
        start = len(plan.prefix.text) if plan.prefix is not None else 0
        index, cut = self._last_added(new_ids, plan.text, start)
        if cut <= start:
            return
        with self._lock:
            known = self._prefixes.get(plan.key)
            if known is not None and known.shared:  # a system prompt sent alone stays every conversation's
                return
            if known is not None and len(known.text) == cut and plan.text.startswith(known.text):
                self._prefixes.move_to_end(plan.key)  # the same messages again (a retry): what is known stays
                plan.kept = known
                return
        kept_ids = len(ids) - len(new_ids) + index
        kept = KeptTurn(plan.text[:cut], ids[:kept_ids], len(ids) - kept_ids)
        if self._store(plan.key, kept):
            plan.kept = kept

    def _last_added(self, ids: list[int], text: str, start: int = 0) -> tuple[int, int]:
        """Where ``ids``, the encoding of ``text`` from ``start`` on, end before their last added token (ids
        up to an added token never depend on what follows): that token's index in ``ids`` and its offset in
        ``text``; the offset is -1 when no added token follows the first id."""
        added = self._added
        index = len(ids) - 1
        while index > 0 and ids[index] not in added:
            index -= 1
        return index, text.rfind(added[ids[index]], start) if index > 0 else -1

    def _store(self, key: int, kept: KeptTurn) -> bool:
        """Keep ``kept`` under ``key`` within the byte budget (least recently used first out); False if it
        alone exceeds the budget."""
        if kept.size > self._prefix_cache_bytes:
            return False
        with self._lock:
            replaced = self._prefixes.pop(key, None)
            if replaced is not None:
                self.prefix_bytes -= replaced.size
            self._prefixes[key] = kept
            self.prefix_bytes += kept.size
            while self.prefix_bytes > self._prefix_cache_bytes:
                self.prefix_bytes -= self._prefixes.popitem(last=False)[1].size
        return True


def _prepared(messages: list[Any]) -> list[Any]:
    """Messages as templates expect them (content parts flattened to a string)."""
    return [
        {**message, "content": flatten_content(message["content"])}
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        else message
        for message in messages
    ]


class PromptTokenizer:
    """Token ids of a prompt for a model: local tokenizer directory if configured, else an engine's
    ``/tokenize`` (answers cached, ``cache_size`` entries)."""

    def __init__(
        self,
        directories: Mapping[str, Path],
        engine_url: Callable[[str], str | None],
        *,
        cache_size: int = 4096,
        prefix_cache_bytes: int = CHAT_PREFIX_CACHE_BYTES,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._directories = dict(directories)
        self._local: dict[str, LocalTokenizer] = {}
        self._engine_url = engine_url
        self._cache: OrderedDict[tuple[str, str], array] = OrderedDict()
        self._cache_size = cache_size
        self._prefix_cache_bytes = prefix_cache_bytes
        self._client = client
        self.remote_calls = 0
        self.remote_failures = 0

    @property
    def prefix_reuses(self) -> int:
        """Chat prompts that were encoded from a cached earlier turn (every local tokenizer)."""
        return sum(local.prefix_reuses for local in self._local.values())

    @property
    def turns_routed(self) -> int:
        """Chat requests routed from a kept earlier turn (every local tokenizer)."""
        return sum(local.turns_routed for local in self._local.values())

    @property
    def turns_remembered(self) -> int:
        """Of those, the ones sent without being tokenized (every local tokenizer)."""
        return sum(local.turns_remembered for local in self._local.values())

    @property
    def prefix_misses(self) -> int:
        return sum(local.prefix_misses for local in self._local.values())

    def local(self, model: str) -> LocalTokenizer | None:
        found = self._local.get(model)
        if found is None and model in self._directories:
            found = self._local[model] = LocalTokenizer(self._directories[model], self._prefix_cache_bytes)
        return found

    def turn_prefix(self, model: str, messages: list[Any]) -> TurnPrefix | None:
        """See :meth:`LocalTokenizer.turn_prefix` (None without a local tokenizer for ``model``)."""
        try:
            local = self.local(model)
        except TokenizerError:
            return None
        if local is None or local._template is None:
            return None
        return local.turn_prefix(messages)

    async def tokens(
        self, model: str, *, prompt: str | None = None, messages: list[Any] | None = None
    ) -> array | None:
        """Token ids (packed u32), or None when neither a local tokenizer nor an engine can tell."""
        local = self.local(model)
        if local is not None:
            if messages is not None:
                plan = local.plan_chat(messages)
                if plan.remaining_chars <= _INLINE_CHARS:
                    return local.finish_chat(plan)
                return await asyncio.to_thread(local.finish_chat, plan)
            if prompt is not None:
                if len(prompt) <= _INLINE_CHARS:
                    return local.encode_prompt(prompt)
                return await asyncio.to_thread(local.encode_prompt, prompt)
            return None
        return await self._remote(model, prompt, messages)

    async def _remote(self, model: str, prompt: str | None, messages: list[Any] | None) -> array | None:
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
            tokens = array(TOKEN_TYPECODE, response.json()["tokens"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError, OverflowError):
            self.remote_failures += 1
            return None
        self._cache[key] = tokens
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tokens
