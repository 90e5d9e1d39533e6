"""Chat requests that continue a kept conversation turn are routed from that turn's ids: the exact ids follow
once the request is sent (or, for a turn adding little text, the turn is only remembered, and the next one
continues from the same kept turn), the kv-aware scores rank pods as the full prompt's would, and a template
that renders earlier messages differently as a conversation grows turns this off."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from jinja2.sandbox import ImmutableSandboxedEnvironment

from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv import tokenizer as tokenizer_module
from brixmesh.router.kv.tokenizer import ChatTemplate, LocalTokenizer, PromptTokenizer, TurnPrefix
from brixmesh.router.routing import Endpoint, RequestContext
from brixmesh.router.routing.scorers.kv_aware import KvAware
from tests.engine_sim.sim_engine import ASSETS
from tests.kv.test_chat_prefix_reuse import MODEL, conversation

BLOCK = 4


_CHATS: dict[tuple[int, int], list[list[dict[str, Any]]]] = {}


def conversation_of(number: int, turns: int = 8) -> list[list[dict[str, Any]]]:
    """Conversation ``number``'s requests (the same list objects every call)."""
    return _CHATS.setdefault((number, turns), conversation(turns, topic=f"topic {number}"))


def interleaved(conversations: int, turns: int) -> list[list[dict[str, Any]]]:
    """Requests of several conversations, turn after turn."""
    chats = [conversation_of(i, turns) for i in range(conversations)]
    return [chat[turn] for turn in range(turns) for chat in chats]


def test_kept_turns_route_once_reuse_is_verified_and_complete_to_the_exact_ids() -> None:
    tokenizer = LocalTokenizer(ASSETS)
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    routed = 0
    for messages in interleaved(5, 7):
        turn = tokenizer.turn_prefix(messages)
        if turn is None:
            assert tokenizer.encode_chat(messages) == reference.encode_chat(messages)
            continue
        routed += 1
        ids = turn.complete()
        assert ids == reference.encode_chat(messages)
        assert ids[: len(turn.ids)] == turn.ids  # what routing scored is where the prompt starts
        assert turn.kept is not None and ids[: len(turn.kept.ids)] == turn.kept.ids
        assert abs(turn.estimated_tokens - len(ids)) <= 0.25 * len(ids)
    assert tokenizer.turn_routing and routed == tokenizer.turns_routed
    assert 0 < routed < 5 * 6  # not before 16 verified reuses; every later continued turn after that


def test_a_remembered_turn_routes_the_next_from_the_same_kept_turn_until_its_new_text_is_tokenized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Turns sent untokenized credit the pod they went to with what it computed; the turn whose new text since
    the kept turn reaches ``LAZY_TURN_CHARS`` is tokenized to the exact ids and kept for the next."""
    monkeypatch.setattr(tokenizer_module, "LAZY_TURN_CHARS", 400)
    tokenizer = LocalTokenizer(ASSETS)
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    for messages in interleaved(6, 4):  # 16 verified reuses earn routing from kept turns
        tokenizer.encode_chat(messages)
    assert tokenizer.turn_prefix(conversation_of(9, 12)[1]) is None  # a first turn is tokenized in full
    tokenizer.encode_chat(conversation_of(9, 12)[0])
    previous: TurnPrefix | None = None
    completed = 0
    for number, messages in enumerate(conversation_of(9, 12)[1:], 1):
        turn = tokenizer.turn_prefix(messages)
        assert turn is not None
        exact = reference.encode_chat(messages)
        if previous is None or previous.kept is not None:  # continues the turn tokenized last
            assert previous is None or turn.prefix is previous.kept
            assert turn.computed_tokens >= len(turn.ids)
        else:  # continues the turn kept before the remembered one, crediting the remembered one's pod
            assert turn.prefix is previous.prefix and turn.last_pod == f"pod{number - 1}"
            assert turn.new_chars > previous.new_chars
            assert abs(turn.computed_tokens - len(reference.encode_chat(messages[:-1]))) <= 0.25 * len(exact)
        assert exact[: len(turn.ids)] == turn.ids
        assert abs(turn.estimated_tokens - len(exact)) <= 0.25 * len(exact)
        ids = turn.sent(f"pod{number}")
        if turn.new_chars >= 400:
            completed += 1
            assert ids == exact and turn.kept is not None and turn.kept.served_by == f"pod{number}"
        else:
            assert ids is None and turn.kept is None
        previous = turn
    assert 2 <= completed < tokenizer.turns_remembered == 11 - completed
    assert tokenizer.turn_routing


def test_a_template_that_looks_ahead_stops_turn_routing(caplog: Any) -> None:
    tokenizer = LocalTokenizer(ASSETS)
    requests = interleaved(5, 7)
    turn = None
    while turn is None:
        messages = requests.pop(0)
        turn = tokenizer.turn_prefix(messages)
        if turn is None:
            tokenizer.encode_chat(messages)
    # the same template, now numbering every message by the conversation's length: earlier messages change
    source = "{% for message in messages %}[{{ messages|length }}]{{ message['content'] }}{% endfor %}"
    tokenizer._template = ChatTemplate(ImmutableSandboxedEnvironment().from_string(source))
    with caplog.at_level(logging.WARNING, "brixmesh.router.kv.tokenizer"):
        turn.complete()
    assert not tokenizer.turn_routing and "no longer routed from kept turns" in caplog.text
    assert all(tokenizer.turn_prefix(messages) is None for messages in requests)


def chat_request(rid: str, messages: list[dict[str, Any]]) -> RequestContext:
    return RequestContext(request_id=rid, api="chat", model=MODEL, body={}, base_model=MODEL, messages=messages)


@pytest.mark.parametrize("lazy_chars", [0, 250])
async def test_kv_aware_scores_a_continued_turn_like_its_full_prompt_and_adds_its_blocks_once_sent(
    lazy_chars: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving pod also holds each answer (as its engine's events would say): a continued turn is credited
    with it on that pod, so its scores stay those of the full prompt. With ``lazy_chars`` 0 every turn is
    tokenized once sent; with 250, most are only remembered and the next turns continue an older kept turn."""
    monkeypatch.setattr(tokenizer_module, "LAZY_TURN_CHARS", lazy_chars)
    tokenizer = PromptTokenizer({MODEL: ASSETS}, lambda model: None)
    index = PrefixIndex(speculative_ttl_s=60.0)
    turns: list[TurnPrefix] = []

    def turn_prefix(ctx: RequestContext) -> TurnPrefix | None:
        found = tokenizer.turn_prefix(MODEL, ctx.messages or [])
        if found is not None:
            turns.append(found)
        return found

    async def tokenize(ctx: RequestContext) -> Any:
        return await tokenizer.tokens(MODEL, messages=ctx.messages)

    scorer = KvAware(index, turns=turn_prefix)
    exact = KvAware(PrefixIndex())  # the full prompt's scores, on a copy of the same holdings
    exact.index = index
    pods = [Endpoint(name=name, url=f"http://{name}", model=MODEL, block_size=BLOCK) for name in ("a", "b")]
    engine = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    requests = interleaved(4, 8)
    answers = {id(chat[turn]): chat[turn + 1][len(chat[turn])] for chat in map(conversation_of, range(4))
               for turn in range(7)}  # fmt: skip
    for number, messages in enumerate(requests):
        ctx = chat_request(f"r{number}", messages)
        ctx.tokenizer = tokenize
        routed_before = len(turns)
        await scorer.prepare(ctx)
        scores = scorer.score(ctx, pods)
        if len(turns) > routed_before:  # routed from a kept turn: rank as the exact scores do
            probe = chat_request(f"probe{number}", messages)
            probe.tokenizer = tokenize
            await exact.prepare(probe)
            full = exact.score(probe, pods)
            assert sorted(scores, key=scores.get) == sorted(full, key=full.get)
            cached, held = scorer.cached_tokens(ctx, pods), exact.cached_tokens(probe, pods)
            # the answers (and remembered turns, estimated) are credited
            assert all(abs(cached[pod] - held[pod]) <= BLOCK + 0.1 * held[pod] for pod in held)
            assert all(abs(scores[pod] - full[pod]) <= 0.1 for pod in full)  # the length is estimated
            exact._requests.clear()
        pod = pods[number % 4 // 2]  # two conversations on each pod
        scorer.on_routed(ctx, pod)
        ids = await tokenizer.tokens(MODEL, messages=messages)
        answer = answers.get(id(messages))
        if answer is not None:  # the engine's events: the prompt and the answer are cached on the pod
            answered = engine.encode_chat([*messages, answer])
            index.add_speculative(pod.name, index.prompt_hashes(answered, BLOCK, MODEL, None))
        assert not scorer._requests  # nothing pending once a request is sent
        held = index.match(index.prompt_hashes(ids, BLOCK, MODEL, None), BLOCK)
        tokenized = len(turns) == routed_before or turns[-1].kept is not None
        # the whole prompt is speculative on its pod, or the kept turn it was routed from
        assert held[pod.name].blocks >= (len(ids) if tokenized else len(turns[-1].ids)) // BLOCK
    assert len(turns) > 8 and all(turn.kept.hashes for turn in turns if turn.kept is not None)
    remembered = sum(turn.kept is None for turn in turns)
    assert remembered > len(turns) // 2 if lazy_chars else remembered == 0


async def test_a_turn_adding_less_than_a_block_continues_its_history_not_a_shared_prefix() -> None:
    """Short turns ("ok", "go on") leave a conversation's longest match ending at the block where its previous
    turn's ended, as a system prompt's does for the conversations that leave it: the pod that served the
    previous turn tells them apart, so the load guard's lead never moves a conversation off its history."""
    tokenizer = PromptTokenizer({MODEL: ASSETS}, lambda model: None)

    async def tokenize(ctx: RequestContext) -> Any:
        return await tokenizer.tokens(MODEL, messages=ctx.messages)

    system = [{"role": "system", "content": "You answer questions about ships and the sea, briefly."}]
    turns = [[*system, {"role": "user", "content": "Hi"}]]
    for words in ("ok", "go on"):
        answer = {"role": "assistant", "content": "Yes."}
        turns.append([*turns[-1], answer, {"role": "user", "content": words}])
    ids = [LocalTokenizer(ASSETS, prefix_cache_bytes=0).encode_chat(turn).tolist() for turn in turns]
    block = len(ids[0])  # every turn's prompt holds exactly one full block
    assert len(ids[-1]) < 2 * block
    scorer = KvAware(PrefixIndex(speculative_ttl_s=60.0))
    pods = [Endpoint(name=name, url=f"http://{name}", model=MODEL, block_size=block) for name in ("a", "b")]

    async def shared_only(
        rid: str, messages: list[dict[str, Any]], token_ids: list[int] | None = None
    ) -> bool:
        ctx = chat_request(rid, messages)
        ctx.tokenizer, ctx.prompt_token_ids = tokenize, token_ids
        await scorer.prepare(ctx)
        scorer.score(ctx, pods)
        scorer.on_routed(ctx, pods[0])
        return ctx.matches_only_shared_prefix

    assert await shared_only("t0", turns[0])  # no pod holds any of it
    assert [await shared_only(f"t{number}", turns[number]) for number in (1, 2)] == [False, False]
    # another prompt leaving at the same block: the first request that is not this conversation's
    assert await shared_only("o0", [], token_ids=[*ids[0], 7, 8, 9])


async def test_first_turns_sharing_a_system_prompt_are_routed_from_it_as_no_conversations_history() -> None:
    """A system prompt is kept on its own the first time it is tokenized: later conversations starting with it
    are routed from it before any tokenizing, their match on it counts as a shared prefix (no conversation's
    history), and their next turns continue it crediting the pod their first turn went to."""
    tokenizer = PromptTokenizer({MODEL: ASSETS}, lambda model: None)
    local = tokenizer.local(MODEL)
    assert local is not None
    reference = LocalTokenizer(ASSETS, prefix_cache_bytes=0)
    for messages in interleaved(6, 4):  # 16 verified reuses earn routing from kept turns
        await tokenizer.tokens(MODEL, messages=messages)
    system = conversation_of(0)[0][0]
    firsts = [[system, {"role": "user", "content": f"Question {n}, a new chat?"}] for n in (1, 2, 3)]
    index = PrefixIndex(speculative_ttl_s=60.0)
    scorer = KvAware(index, turns=lambda ctx: tokenizer.turn_prefix(MODEL, ctx.messages or []))
    pods = [Endpoint(name=name, url=f"http://{name}", model=MODEL, block_size=BLOCK) for name in ("a", "b")]
    shared = []
    for number, messages in enumerate(firsts):
        ctx = chat_request(f"first{number}", messages)
        await scorer.prepare(ctx)
        turn = scorer._requests[ctx.request_id].turn
        assert turn is not None and turn.prefix.shared and turn.last_pod is None
        assert reference.encode_chat(messages)[: len(turn.ids)] == turn.ids
        scores = scorer.score(ctx, pods)
        shared.append(ctx.matches_only_shared_prefix)
        scorer.on_routed(ctx, pods[0])
        assert turn.kept is None  # remembered, not tokenized
        assert set(scores) == ({"a"} if number else set())
    # nothing held yet; the first match ending at the system prompt's last block; one ending where it did
    assert shared == [True, False, True]
    answer = {"role": "assistant", "content": "An answer."}
    follow_up = [*firsts[0], answer, {"role": "user", "content": "And then?"}]
    turn = tokenizer.turn_prefix(MODEL, follow_up)
    assert turn is not None and turn.prefix.shared and turn.last_pod == "a"
    # what pod "a" computed (estimated): more than the system prompt, less than this whole prompt
    assert len(turn.ids) < turn.computed_tokens < len(reference.encode_chat(follow_up))
    assert await tokenizer.tokens(MODEL, messages=follow_up) == reference.encode_chat(follow_up)


def test_remembered_turns_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer_module, "_SENT_TURNS_LIMIT", 3)
    tokenizer = LocalTokenizer(ASSETS)
    for messages in interleaved(6, 4):  # 16 verified reuses earn routing from kept turns
        tokenizer.encode_chat(messages)
    for number in range(10, 15):  # five conversations: a first turn kept, a second one remembered
        first, second = conversation_of(number, 2)
        tokenizer.encode_chat(first)
        turn = tokenizer.turn_prefix(second)
        assert turn is not None and turn.sent(f"pod{number}") is None
    assert tokenizer.turns_remembered == 5 and len(tokenizer._sent) == 3
    newest = conversation_of(14, 3)[2]  # the newest remembered turn still routes its conversation
    turn = tokenizer.turn_prefix(newest)
    assert turn is not None and turn.last_pod == "pod14"
    oldest = conversation_of(10, 3)[2]  # the oldest was dropped: its next turn continues the kept first turn
    turn = tokenizer.turn_prefix(oldest)
    assert turn is not None and turn.last_pod is None
