import json

import pytest
from brixmesh.engine_sim.hashing import (
    DEFAULT_NONE_HASH_SEED,
    BlockHasher,
    block_extra_keys,
    published_extra_keys,
    resolve_none_hash_seed,
    use_int_block_hashes_from_env,
)

from tests.engine_sim.captures import CAPTURES, capture_events

BLOCK = 32


def _recompute_capture(name: str) -> tuple[int, int]:
    """Replays the capture's BlockStored chains through the hasher; returns (matched, total) hashes."""
    hasher = BlockHasher("sha256", environ={"PYTHONHASHSEED": "0"})
    digests: dict[int, bytes] = {}
    matched = total = 0
    for event in capture_events(name):
        if event["type"] != "BlockStored" or event["lora_name"] is not None:
            continue
        parent_ext = event["parent_block_hash"]
        parent = None if parent_ext is None else digests[parent_ext]
        ours = hasher.hash_blocks(event["token_ids"], BLOCK, parent=parent)
        for digest, published in zip(ours, event["block_hashes"], strict=True):
            total += 1
            matched += hasher.external(digest) == published
            digests[published] = digest
    return matched, total


def test_store_remove_capture_hashes_all_recompute() -> None:
    matched, total = _recompute_capture("kv_events_store_remove.jsonl")
    assert total == 772
    assert matched == total


def test_all_cleared_and_lora_capture_base_hashes_recompute() -> None:
    assert _recompute_capture("kv_events_all_cleared.jsonl") == (2, 2)
    assert _recompute_capture("kv_events_lora.jsonl") == (21, 21)


def test_none_hash_seed_rules() -> None:
    assert resolve_none_hash_seed("sha256", {"PYTHONHASHSEED": "0"}) == "0"
    assert resolve_none_hash_seed("xxhash", {"PYTHONHASHSEED": "7"}) == "7"
    assert resolve_none_hash_seed("sha256", {}) == DEFAULT_NONE_HASH_SEED
    assert resolve_none_hash_seed("sha256_cbor", {}) == DEFAULT_NONE_HASH_SEED
    first, second = resolve_none_hash_seed("xxhash_cbor", {}), resolve_none_hash_seed("xxhash_cbor", {})
    assert first != second and DEFAULT_NONE_HASH_SEED not in (first, second)


def test_unseeded_sha256_cbor_none_hash_matches_vllm() -> None:
    # Reference value measured on vLLM 0.32 without PYTHONHASHSEED.
    hasher = BlockHasher("sha256_cbor", environ={})
    assert hasher.none_hash.hex().startswith("9bd96a48")
    assert hasher.none_hash.hex().endswith("81eef0")


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
def test_chain_depends_on_parent_tokens_and_extra(algo: str) -> None:
    hasher = BlockHasher(algo, seed="s")  # type: ignore[arg-type]
    tokens = list(range(8))
    a0, a1 = hasher.hash_blocks(tokens, 4)
    assert hasher.hash_blocks(tokens[4:], 4, parent=a0, first_block_index=1) == [a1]
    assert hasher.hash_blocks([9, *tokens[1:]], 4)[1] != a1
    assert hasher.hash_blocks(tokens, 4, lora_name="x", lora_path="/p")[0] != a0
    assert (
        hasher.hash_blocks(tokens, 4, lora_name="x", lora_path="/q")[0]
        != hasher.hash_blocks(tokens, 4, lora_name="x", lora_path="/p")[0]
    )
    assert len(hasher.hash_blocks(tokens[:7], 4)) == 1
    expected_len = 16 if algo.startswith("xxhash") else 32
    assert len(a0) == expected_len


def test_extra_keys_tagged_for_hashing_untagged_when_published() -> None:
    assert block_extra_keys(0, None, None, None) is None
    assert block_extra_keys(0, "a", "/p", "salt") == (("lora", "a", "/p"), ("cache_salt", "salt"))
    assert block_extra_keys(1, "a", "/p", "salt") == (("lora", "a", "/p"),)
    assert block_extra_keys(1, None, None, "salt") is None
    assert published_extra_keys(block_extra_keys(0, "a", "/p", "salt")) == ["a", "salt"]
    assert published_extra_keys(None) is None


def test_salt_changes_whole_chain() -> None:
    hasher = BlockHasher("sha256", seed="0")
    plain = hasher.hash_blocks(list(range(8)), 4)
    salted = hasher.hash_blocks(list(range(8)), 4, cache_salt="tenant")
    assert plain[0] != salted[0] and plain[1] != salted[1]


def test_published_form() -> None:
    digest = bytes(range(32))
    assert BlockHasher("sha256", seed="0", use_int_hashes=True).external(digest) == int.from_bytes(
        digest[-8:], "big"
    )
    assert BlockHasher("sha256", seed="0", use_int_hashes=False).external(digest) == digest
    assert use_int_block_hashes_from_env({}) is True
    assert use_int_block_hashes_from_env({"VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": "0"}) is False
    with pytest.raises(ValueError, match="VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES"):
        use_int_block_hashes_from_env({"VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": "yes"})


def test_unknown_algo_rejected() -> None:
    with pytest.raises(ValueError, match="unknown prefix caching hash algo 'md5'"):
        BlockHasher("md5")  # type: ignore[arg-type]


def test_unseeded_variants_match_real_vllm() -> None:
    variants = json.loads((CAPTURES / "kv_hash_variants.json").read_text(encoding="utf-8"))
    cbor = variants["sha256_cbor_unseeded_int"]
    hasher = BlockHasher("sha256_cbor", environ={})
    assert [hasher.external(d) for d in hasher.hash_blocks(cbor["token_ids"], BLOCK)] == cbor["block_hashes"]

    raw = variants["sha256_unseeded_bytes"]
    hasher = BlockHasher("sha256", environ={"VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": "0"})
    published = [hasher.external(d) for d in hasher.hash_blocks(raw["token_ids"], BLOCK)]
    assert published == [bytes.fromhex(h) for h in raw["block_hashes_hex"]]
