"""The vLLM tier connector's planning (``brixmesh.common.kv_tier_plan``): settings, which blocks to load and
to save, and how much of a fetched prefix is usable."""

from __future__ import annotations

import pytest

from brixmesh.common.kv_tier_plan import (
    AnnouncedBlocks,
    DEFAULT_LOOKUP_TIMEOUT_MS,
    completed_blocks,
    leading_valid,
    loadable_blocks,
    parse_settings,
)


def test_settings_take_nodes_as_list_or_comma_string_and_ms_as_seconds() -> None:
    settings = parse_settings({"tier_nodes": "127.0.0.1:7390, 127.0.0.1:7391", "load_timeout_ms": 250})
    assert settings.tier_nodes == ("127.0.0.1:7390", "127.0.0.1:7391")
    assert settings.load_timeout_s == 0.25
    assert settings.lookup_timeout_s == DEFAULT_LOOKUP_TIMEOUT_MS / 1000
    assert parse_settings({"tier_nodes": ["[::1]:7390"]}).tier_nodes == ("[::1]:7390",)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (None, "tier_nodes"),
        ({"tier_nodes": []}, "tier_nodes"),
        ({"tier_nodes": ["localhost"]}, "host:port"),
        ({"tier_nodes": ["h:1"], "load_timeout_ms": 0}, "load_timeout_ms must be a positive number"),
        ({"tier_nodes": ["h:1"], "max_pending_loads": 2.5}, "max_pending_loads must be a positive integer"),
        ({"tier_nodes": ["h:1"], "max_pending_saves": True}, "max_pending_saves"),
        ({"tier_nodes": ["h:1"], "lookup_timeout": 5}, "unknown fields ['lookup_timeout']"),
    ],
)
def test_bad_settings_get_one_line_errors(extra: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]*$") as caught:
        parse_settings(extra)
    assert message in str(caught.value)


def test_loadable_blocks_start_after_the_local_hit_and_leave_a_token_to_compute() -> None:
    # 100 tokens, blocks of 32: blocks 0..2 are full; all 96 tokens may come from the tier (4 are computed).
    assert loadable_blocks(100, 0, 32) == range(0, 3)
    assert loadable_blocks(100, 32, 32) == range(1, 3)
    # 96 tokens fill 3 blocks exactly, but the last token must be computed: only blocks 0..1.
    assert loadable_blocks(96, 0, 32) == range(0, 2)
    assert not loadable_blocks(31, 0, 32)
    assert not loadable_blocks(96, 64, 32)


def test_completed_blocks_are_those_a_step_fills() -> None:
    # Prefill of 100 tokens from scratch fills blocks 0..2.
    assert completed_blocks(0, 100, 32, num_hashed=3) == range(0, 3)
    # Decode steps: the token at position 127 completes block 3, the ones before it complete nothing.
    assert not completed_blocks(100, 1, 32, num_hashed=3)
    assert completed_blocks(127, 1, 32, num_hashed=4) == range(3, 4)
    # A chunk starting mid-block completes the block it started in.
    assert completed_blocks(40, 60, 32, num_hashed=3) == range(1, 3)
    # Only hashed blocks can be named in the tier.
    assert completed_blocks(0, 100, 32, num_hashed=2) == range(0, 2)


def test_a_fetched_prefix_is_usable_up_to_its_first_gap_or_wrong_size() -> None:
    block = b"x" * 8
    assert leading_valid([block, memoryview(block), None, block], 8) == 2
    assert leading_valid([block, b"short", block], 8) == 1
    assert leading_valid([], 8) == 0
    assert leading_valid([block, block], 8) == 2


def test_announced_blocks_are_bounded_and_forget_what_the_tier_lost() -> None:
    announced = AnnouncedBlocks(limit=4)
    assert announced.announce([b"a", b"b", b"c"]) == (0, [])
    # A later save of a longer chain: only its tail is new; the bound withdraws the oldest.
    assert announced.announce([b"a", b"b", b"c", b"d", b"e"]) == (3, [b"a"])
    assert announced.announce([b"b", b"c"]) == (2, [])
    assert announced.lost([b"x", b"d", b"e"]) == [b"d", b"e"]
    assert len(announced) == 2
    assert announced.lost([b"d"]) == []
