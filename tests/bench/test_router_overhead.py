"""bench/router_overhead.py's pure parts: its multi-turn traffic and how it reads the router's event lag."""

from __future__ import annotations

import router_overhead
from router_overhead import Conversations, lag_cell, lag_summary


def test_each_request_continues_its_conversation_with_one_new_question() -> None:
    conversations = Conversations(seed=1)
    seen: dict[str, list[dict[str, str]]] = {}
    continued = 0
    for _ in range(2000):
        messages = conversations.next_messages()
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
        assert len(messages) <= 2 * router_overhead.MAX_TURNS
        previous = seen.get(messages[0]["content"] + messages[1]["content"])
        if previous is not None and len(previous) < len(messages):
            assert messages[: len(previous)] == previous  # the earlier turns are the prompt's prefix
            assert messages[len(previous)] == {"role": "assistant", "content": router_overhead.ANSWER}
            continued += 1
        seen[messages[0]["content"] + messages[1]["content"]] = messages
    assert continued > 1000


def test_lag_p99_is_the_bucket_holding_the_99th_percentile_of_the_window() -> None:
    before = {"buckets": {0.01: 100.0, 0.02: 100.0, float("inf"): 100.0}, "applied": 100.0, "at": 0.0}
    after = {"buckets": {0.01: 1000.0, 0.02: 1099.0, float("inf"): 1100.0}, "applied": 1100.0, "at": 1.25}
    summary = lag_summary(before, after)
    assert summary["lag_p99_ms_at_most"] == 20.0 and summary["applied_batches_per_s"] == 800.0
    assert lag_cell(summary) == "<= 20 ms"
    behind = lag_summary(before, {**after, "applied": 600.0})
    assert lag_cell(behind) == "behind 400/800 batches/s"
