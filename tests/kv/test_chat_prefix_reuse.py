"""The router's tokenizer reuses a conversation's earlier turns: the same token ids as a full encode, a
cache within a byte budget, reuse turned off when a tokenizer does not split at its added tokens."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from brixmesh.router.kv.hashing import block_hashes, first_seed
from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.tokenizer import (
    ChatIds,
    ChatTemplate,
    LocalTokenizer,
    PromptTokenizer,
    TokenizerError,
)
from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorers.kv_aware import KvAware
from tests.engine_sim.sim_engine import ASSETS

MODEL = "tiny-llama"


def conversation(turns: int, topic: str = "ships") -> list[list[dict[str, Any]]]:
    """The message lists a client sends turn after turn: each repeats the earlier ones."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": f"You answer questions about {topic}."}]
    requests = []
    for turn in range(turns):
        content: Any = f"Question {turn} about {topic}: why ünïcode, and   spaces\n\tand tabs?"
        if turn % 3 == 2:  # OpenAI content parts are flattened like plain strings
            content = [{"type": "text", "text": content}, {"type": "text", "text": "one more part"}]
        messages = [*messages, {"role": "user", "content": content}]
        requests.append(messages)
        messages = [*messages, {"role": "assistant", "content": f" Answer {turn}: it floats.<|im_end|> not"}]
    return requests


def test_every_turn_encodes_like_a_full_encode_and_reuses_the_previous_one() -> None:
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    tokenizer = LocalTokenizer(ASSETS)
    requests = conversation(10)
    for messages in requests:
        assert tokenizer.encode_chat(messages) == reference.encode_chat(messages)
    assert tokenizer.reuse
    assert tokenizer.fast  # tiktoken's ids: checked against the Hugging Face tokenizer's on the first encodes
    assert (tokenizer.prefix_reuses, tokenizer.prefix_misses) == (len(requests) - 1, 1)
    assert not reference.reuse and reference.prefix_reuses == 0


def test_an_edited_earlier_message_is_encoded_afresh() -> None:
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    tokenizer = LocalTokenizer(ASSETS)
    first, second = conversation(2)
    tokenizer.encode_chat(first)
    edited = [{**second[0], "content": "You answer questions about trains."}, *second[1:]]
    assert tokenizer.encode_chat(edited) == reference.encode_chat(edited)
    assert tokenizer.prefix_reuses == 0


def test_a_system_prompt_is_kept_on_its_own_and_continued_by_other_conversations() -> None:
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    tokenizer = LocalTokenizer(ASSETS)
    first = conversation(1, "ships")[0]
    other = [first[0], {"role": "user", "content": "Another question, from another conversation."}]
    assert tokenizer.encode_chat(first) == reference.encode_chat(first)
    ids = tokenizer.encode_chat(other)
    assert ids == reference.encode_chat(other)
    system = ids.prefix
    assert system is not None and system.shared and system.text.endswith("You answer questions about ships.")
    assert (tokenizer.prefix_reuses, tokenizer.prefix_misses) == (1, 1)  # the first one encoded it


def test_a_template_that_renders_a_system_prompt_differently_alone_keeps_none() -> None:
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    tokenizer = LocalTokenizer(ASSETS)
    # numbering every message by the conversation's length: the system message alone renders differently
    source = (
        "{% for message in messages %}[{{ messages|length }}]<|im_start|>{{ message['content'] }}{% endfor %}"
    )
    for local in (tokenizer, reference):
        local._template = ChatTemplate(ImmutableSandboxedEnvironment().from_string(source))
    first = conversation(1, "ships")[0]
    other = [first[0], {"role": "user", "content": "Another question."}]
    for messages in (first, other):
        ids = tokenizer.encode_chat(messages)
        assert ids == reference.encode_chat(messages) and ids.prefix is None
    assert not tokenizer.keeps_system_prompts and tokenizer.prefix_misses == 2


def test_the_cache_keeps_the_most_recent_conversations_within_its_byte_budget() -> None:
    chats = [conversation(2, topic) for topic in ("ships", "trains", "planes")]
    sizes = []
    for chat in chats:
        alone = LocalTokenizer(ASSETS)
        alone.encode_chat(chat[0])
        sizes.append(alone.prefix_bytes)
    tokenizer = LocalTokenizer(ASSETS, prefix_cache_bytes=sizes[1] + sizes[2])
    for chat in chats:
        tokenizer.encode_chat(chat[0])
    assert tokenizer.prefix_bytes == sizes[1] + sizes[2]
    tokenizer.encode_chat(chats[2][1])  # kept
    tokenizer.encode_chat(chats[0][1])  # its first turn was pushed out by the two later conversations
    assert (tokenizer.prefix_reuses, tokenizer.prefix_misses) == (1, 4)


class _PrependingSpace:
    """A tokenizer that, like a SentencePiece one prepending a space, encodes a text's start differently:
    a suffix encoded alone does not continue its prefix."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> Any:
        return self._tokenizer.encode(" " + text, add_special_tokens=add_special_tokens)

    def get_added_tokens_decoder(self) -> Any:
        return self._tokenizer.get_added_tokens_decoder()


def test_a_reuse_that_disagrees_with_a_full_encode_turns_reuse_off(caplog: Any) -> None:
    tokenizer = LocalTokenizer(ASSETS)
    tokenizer._tok = _PrependingSpace(tokenizer._tok)
    first, second, third = conversation(3)
    with caplog.at_level(logging.WARNING, "brixmesh.router.kv.tokenizer"):
        ids = tokenizer.encode_chat(first)  # continues its system prompt, encoded alone
    text = tokenizer.plan_chat(first).text
    assert ids.tolist() == tokenizer._tok.encode(text, add_special_tokens=False).ids
    assert not tokenizer.reuse and "chat prefix reuse is off" in caplog.text
    tokenizer.encode_chat(second)
    tokenizer.encode_chat(third)
    assert tokenizer.prefix_reuses == 0


async def test_long_conversations_reuse_their_turns_through_the_router_tokenizer() -> None:
    tokenizer = PromptTokenizer({MODEL: ASSETS}, lambda model: None)
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    long_system = {"role": "system", "content": "Context: " + "the harbour log says nothing new. " * 200}
    for messages in conversation(4):
        messages = [long_system, *messages[1:]]  # past the inline limit: turn 1 is encoded in a thread
        assert await tokenizer.tokens(MODEL, messages=messages) == reference.encode_chat(messages)
    local = tokenizer.local(MODEL)
    assert local is not None and (local.prefix_reuses, local.prefix_misses) == (3, 1)


async def test_kv_aware_hashes_only_the_blocks_after_the_kept_turn_and_like_a_full_prompt() -> None:
    tokenizer = PromptTokenizer({MODEL: ASSETS}, lambda model: None)
    index = PrefixIndex(speculative_ttl_s=60.0)
    scorer = KvAware(index)
    pod = Endpoint(name="a", url="http://a", model=MODEL, block_size=4)
    key = (4, first_seed(MODEL, None, None))

    async def tokenize(ctx: RequestContext) -> Any:
        return await tokenizer.tokens(MODEL, messages=ctx.messages)

    for number, messages in enumerate(conversation(6)):
        ctx = RequestContext(
            f"r{number}", "chat", MODEL, {}, base_model=MODEL, messages=messages, tokenizer=tokenize
        )
        await scorer.prepare(ctx)
        scorer.score(ctx, [pod])
        ids = await ctx.token_ids()
        assert isinstance(ids, ChatIds)
        full = block_hashes(ids, 4, MODEL)
        if number:  # the previous turn's blocks were hashed with it
            assert ids.prefix is not None and ids.prefix.hashes[key] == full[: len(ids.prefix.ids) // 4]
        assert ids.kept is not None and ids.kept.hashes == {key: full[: len(ids.kept.ids) // 4]}
        scorer.on_routed(ctx, pod)
        assert index.match(full, 4)["a"].blocks == len(full)  # speculative entries from the continued chain


def test_messages_the_template_cannot_render_are_a_tokenizer_error() -> None:
    tokenizer = LocalTokenizer(ASSETS)
    tool_call = {"role": "assistant", "content": None, "tool_calls": []}  # valid OpenAI; the template adds strings
    with pytest.raises(TokenizerError, match="chat template failed"):
        tokenizer.encode_chat([{"role": "user", "content": "hi"}, tool_call])
    with pytest.raises(TokenizerError, match="chat template failed"):
        tokenizer.encode_chat([{"role": "user"}])
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    messages = conversation(3)[-1]
    assert tokenizer.encode_chat(messages) == reference.encode_chat(messages)
    assert reference._tok.decode(list(reference.encode_chat(messages)), skip_special_tokens=False).startswith(
        "<s><|im_start|>system\nYou answer questions about ships.<|im_end|>\n<|im_start|>user\nQuestion 0"
    )
