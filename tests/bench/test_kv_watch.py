import math

from brixbench.engine_metrics import FleetNumbers
from brixbench.kv_watch import unlimited_cache_hit_rate


def test_unlimited_cache_counts_whole_leading_blocks_seen_before_as_vllm_does() -> None:
    first = list(range(10))  # blocks of 4: [0..3] [4..7], 2 tokens left over
    second = list(range(8)) + [99, 98]  # shares both full blocks with the first
    same_again = list(range(8))  # all cached, but vLLM always computes the last token: 1 block hit
    rate = unlimited_cache_hit_rate([(first, []), (second, []), (same_again, [])], 4)
    assert rate == (0 + 8 + 4) / (10 + 10 + 8)
    assert math.isnan(unlimited_cache_hit_rate([], 4))


def test_unlimited_cache_holds_the_computed_output_too() -> None:
    turn1, answer = [1, 2, 3], [4, 5, 6, 7, 8]  # computed: 1..7 (the last output token never is)
    turn2 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert unlimited_cache_hit_rate([(turn1, answer), (turn2, [])], 4) == 4 / 13


def test_busiest_over_mean() -> None:
    numbers = FleetNumbers(0.5, 0, 0, 0, (0.5, 0.5), requests=(30.0, 10.0))
    assert numbers.busiest_over_mean == 1.5
    assert math.isnan(FleetNumbers(0.5, 0, 0, 0, ()).busiest_over_mean)
