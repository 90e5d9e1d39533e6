import json
import random
import statistics

import pytest
from brixbench.fleet import TOKENIZER_DIR
from brixbench.text import TextSource, single_token_words
from brixbench.workloads import (
    Job,
    TraceError,
    llmd_shared_prefix,
    mooncake_trace,
    multi_turn,
    pareto_sample,
    shared_prefix,
    sharegpt_like,
)

SOURCE = TextSource()


def test_shared_prefix_groups_share_exactly_their_system_text():
    jobs = shared_prefix(SOURCE, groups=4, prompts_per_group=3, system_len=50, question_len=10, output_len=7)
    assert len(jobs) == 12
    by_group: dict[str, set[str]] = {}
    for job in jobs:
        by_group.setdefault(job.group, set()).add(job.system)
        assert len(job.system.split(" ")) == 50 and len(job.turns[0].split(" ")) == 10
        assert job.max_tokens == (7,) and job.prompt.startswith(job.system + "\n\n")
    assert all(len(systems) == 1 for systems in by_group.values())
    assert len({next(iter(s)) for s in by_group.values()}) == 4


def test_shared_prefix_is_seeded_and_shuffled_unless_ordered():
    a = shared_prefix(SOURCE, groups=5, prompts_per_group=4, system_len=8, seed=3)
    assert a == shared_prefix(SOURCE, groups=5, prompts_per_group=4, system_len=8, seed=3)
    assert a != shared_prefix(SOURCE, groups=5, prompts_per_group=4, system_len=8, seed=4)
    ordered = shared_prefix(SOURCE, groups=5, prompts_per_group=4, system_len=8, seed=3, shuffle=False)
    assert [j.group for j in ordered] == [f"g{g}" for g in range(5) for _ in range(4)]
    assert [j.group for j in a] != [j.group for j in ordered]


def test_range_ratio_draws_lengths_in_range():
    jobs = shared_prefix(SOURCE, groups=20, prompts_per_group=5, system_len=100, question_len=40, output_len=30,
                         range_ratio=0.5)
    assert {len(j.turns[0].split(" ")) for j in jobs} <= set(range(20, 41))
    assert len({j.max_tokens[0] for j in jobs}) > 5
    assert all(15 <= j.max_tokens[0] <= 30 for j in jobs)


def test_llmd_set_has_150_groups_of_5_and_scales_lengths():
    jobs = llmd_shared_prefix(SOURCE, scale=0.01)
    assert len(jobs) == 750 and len({j.group for j in jobs}) == 150
    assert len(jobs[0].system.split(" ")) == 60 and jobs[0].max_tokens == (10,)


def test_multi_turn_turn_counts_follow_the_published_distribution():
    jobs = multi_turn(SOURCE, sessions=2000, turn_len_mean=20, turn_len_std=5, seed=1)
    counts = [len(j.turns) for j in jobs]
    assert min(counts) == 1
    # N(3.55, 2.89) cut at 1 from below: mean ~4.0
    assert 3.7 < statistics.mean(counts) < 4.3
    assert all(j.api == "chat" and len(j.max_tokens) == len(j.turns) for j in jobs)


def test_pareto_sample_has_the_asked_mean_and_std():
    rng = random.Random(0)
    samples = [pareto_sample(rng, 2000, 500) for _ in range(40000)]
    assert statistics.mean(samples) == pytest.approx(2000, rel=0.03)
    assert statistics.stdev(samples) == pytest.approx(500, rel=0.15)
    assert min(samples) > 1500


def test_sharegpt_like_obeys_vllm_filter():
    jobs = sharegpt_like(SOURCE, requests=300, seed=2)
    assert len(jobs) == 300
    for job in jobs:
        n_in, n_out = len(job.turns[0].split(" ")), job.max_tokens[0]
        assert 4 <= n_in <= 1024 and n_out >= 4 and n_in + n_out <= 2048


def _trace_line(ts: int, n_in: int, hash_ids: list[int], n_out: int = 5) -> str:
    return json.dumps({"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": hash_ids})


def test_mooncake_trace_expands_hash_ids_to_shared_blocks():
    lines = [_trace_line(0, 20, [1, 2, 3]), _trace_line(1500, 18, [1, 2, 7]), _trace_line(2500, 9, [9, 1])]
    jobs = mooncake_trace(lines, SOURCE, block_tokens=8)
    words = [j.turns[0].split(" ") for j in jobs]
    assert [len(w) for w in words] == [20, 18, 9]
    assert words[0][:16] == words[1][:16] and words[0][16:] != words[1][16:18]
    assert words[2][8:9] == words[0][:1]  # hash id 1 is the same block wherever it appears
    assert [j.at_s for j in jobs] == [0.0, 1.5, 2.5]
    assert mooncake_trace(lines, SOURCE, block_tokens=8) == jobs


def test_mooncake_trace_errors_name_the_line():
    with pytest.raises(TraceError, match="trace line 2"):
        mooncake_trace([_trace_line(0, 4, [1]), '{"timestamp": 1}'], SOURCE)


def test_job_validation():
    with pytest.raises(ValueError, match="max_tokens"):
        Job("x", "", ("a", "b"), (1,), api="chat")
    with pytest.raises(ValueError, match="exactly one turn"):
        Job("x", "", ("a", "b"), (1, 1))


def test_engine_vocabulary_words_are_single_tokens():
    from tokenizers import Tokenizer

    words = single_token_words(TOKENIZER_DIR / "tokenizer.json")
    tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    text = TextSource(words).text(random.Random(0), 500)
    assert abs(len(tok.encode(text, add_special_tokens=False).ids) - 500) <= 5
