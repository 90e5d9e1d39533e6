import math

import pytest
from brixbench.engine_metrics import EngineSeries, fleet_numbers, parse_metrics
from brixbench.stats import Distribution, RequestRecord, Slo, percentile, summarize


def test_percentile_matches_numpy_linear_interpolation():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(7.6)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert math.isnan(percentile([], 50))


def _record(job, ttft, e2e, n_out, gaps=(), ok=True, prompt=100, cached=None):
    return RequestRecord(job, 0, 0.0, ok=ok, ttft_s=ttft, e2e_s=e2e, chunk_gaps_s=list(gaps), prompt_tokens=prompt,
                         output_tokens=n_out, cached_tokens=cached, error="" if ok else "HTTP 503")


def test_summary_follows_benchmark_serving_definitions():
    records = [
        _record("a", 0.1, 1.1, 11, gaps=[0.1] * 10, cached=50),
        _record("b", 0.3, 2.3, 5, gaps=[0.5] * 4, cached=0),
        _record("c", None, None, 0, ok=False),
    ]
    s = summarize(records, duration_s=4.0, slo=Slo(ttft_s=0.2))
    assert s.requests == 3 and s.succeeded == 2 and s.success_rate == pytest.approx(2 / 3)
    assert s.ttft.mean == pytest.approx(0.2) and s.ttft.count == 2
    assert s.tpot.mean == pytest.approx((0.1 + 0.5) / 2)  # (e2e - ttft) / (n_out - 1) per request
    assert s.itl.count == 14  # every gap, pooled
    assert s.output_throughput == pytest.approx(16 / 4.0)
    assert s.total_throughput == pytest.approx((16 + 200) / 4.0)
    assert s.goodput == pytest.approx(1 / 4.0)  # only "a" meets TTFT <= 0.2 s
    assert s.client_cached_fraction == pytest.approx(50 / 200)


def test_slo_checks_every_bound():
    record = _record("a", 0.1, 1.1, 11)
    assert Slo().met(record)
    assert not Slo(tpot_s=0.05).met(record)
    assert not Slo(e2e_s=1.0).met(record)
    assert not Slo().met(_record("b", None, None, 0, ok=False))


def test_distribution_of_nothing_is_nan():
    d = Distribution.of([])
    assert d.count == 0 and math.isnan(d.mean) and math.isnan(d.p99)


METRICS = """# HELP vllm:prefix_cache_queries Prefix cache queries.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 250.0
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 3.0
vllm:num_preemptions_total{engine="0",model_name="m"} 2.0
vllm:num_requests_running 4
"""


def test_parse_metrics_sums_only_the_wanted_series():
    values = parse_metrics(METRICS)
    assert values == {"vllm:prefix_cache_queries_total": 1000.0, "vllm:prefix_cache_hits_total": 250.0,
                      "vllm:num_requests_waiting": 3.0, "vllm:num_preemptions_total": 2.0,
                      "vllm:num_requests_running": 4.0}


def test_fleet_numbers_use_counter_deltas():
    a = EngineSeries("a", first={"vllm:prefix_cache_queries_total": 100, "vllm:prefix_cache_hits_total": 10},
                     last={"vllm:prefix_cache_queries_total": 300, "vllm:prefix_cache_hits_total": 110,
                           "vllm:num_preemptions_total": 1}, samples=[(0, 2, 1), (1, 0, 1)])
    b = EngineSeries("b", first={}, last={"vllm:prefix_cache_queries_total": 200,
                                          "vllm:prefix_cache_hits_total": 50}, samples=[(0, 4, 0)])
    numbers = fleet_numbers([a, b])
    assert numbers.hit_rate == pytest.approx(150 / 400)
    assert numbers.preemptions == 1 and numbers.mean_waiting == pytest.approx(2.0) and numbers.max_waiting == 4
    assert numbers.requests_share == (0.5, 0.5)
    assert math.isnan(fleet_numbers([EngineSeries("c")]).hit_rate)
