"""The test helpers' vLLM block-hash recomputation agrees with every hash in the real engine captures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plugins.vllm_engine import NONE_HASH, published_block_hash, vllm_block_digests

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32-cpu"


def _stored_events(name: str) -> list[dict]:
    lines = (CAPTURES / name).read_text().splitlines()
    return [
        event for line in lines for event in json.loads(line)["batch"][1] if event["type"] == "BlockStored"
    ]


@pytest.mark.parametrize("capture", ["kv_events_store_remove.jsonl", "kv_events_all_cleared.jsonl"])
def test_recomputed_hashes_match_every_captured_block(capture: str) -> None:
    digests_by_published: dict[int, bytes] = {}
    checked = 0
    for event in _stored_events(capture):
        parent = event["parent_block_hash"]
        parent_digest = NONE_HASH if parent is None else digests_by_published[parent]
        digests = vllm_block_digests(event["token_ids"], event["block_size"], parent_digest)
        assert [published_block_hash(d) for d in digests] == event["block_hashes"]
        digests_by_published.update((published_block_hash(d), d) for d in digests)
        checked += len(digests)
    assert checked > 0


def test_base_model_blocks_in_lora_capture_recompute() -> None:
    base_events = [event for event in _stored_events("kv_events_lora.jsonl") if event["lora_name"] is None]
    digests_by_published: dict[int, bytes] = {}
    for event in base_events:
        parent = event["parent_block_hash"]
        parent_digest = NONE_HASH if parent is None else digests_by_published[parent]
        digests = vllm_block_digests(event["token_ids"], event["block_size"], parent_digest)
        assert [published_block_hash(d) for d in digests] == event["block_hashes"]
        digests_by_published.update((published_block_hash(d), d) for d in digests)
    assert len(base_events) == 21


def test_a_changed_token_changes_the_hash() -> None:
    tokens = list(range(64))
    original = vllm_block_digests(tokens, 32)
    tokens[40] += 1
    changed = vllm_block_digests(tokens, 32)
    assert original[0] == changed[0] and original[1] != changed[1]
    assert vllm_block_digests(tokens[:31], 32) == []
