from brixbench.contenders.reference import EngineCache
from brixbench.kv_watch import block_keys
from brixmesh.engine_sim.kv_event_types import AllBlocksCleared, BlockRemoved, BlockStored


def _stored(hashes, parent, tokens, block_size=4):
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=block_size,
                       lora_id=None, medium="GPU", lora_name=None)


def test_engine_cache_matches_by_content_chain_and_follows_removals():
    cache = EngineCache()
    tokens = list(range(12))
    cache.apply(_stored([101, 102], None, tokens[:8]), 4)
    cache.apply(_stored([103], 102, tokens[8:12]), 4)
    keys = block_keys(tokens + [99, 98], 4)
    assert len(keys) == 3 and cache.matched(keys) == 3
    assert cache.matched(block_keys([0, 1, 2, 3, 7, 7, 7, 7], 4)) == 1
    cache.apply(BlockRemoved(block_hashes=[102], medium="GPU"), 4)
    assert cache.matched(keys) == 1  # a hole in the chain ends the match
    cache.apply(AllBlocksCleared(), 4)
    assert cache.matched(keys) == 0


def test_pending_blocks_count_until_released():
    cache = EngineCache()
    keys = block_keys(list(range(8)), 4)
    cache.pending.update(keys)
    assert cache.matched(keys) == 2
    cache.pending.subtract(keys)
    cache.pending += type(cache.pending)()  # drop the zero counts
    assert cache.matched(keys) == 0
