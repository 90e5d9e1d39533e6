"""Prometheus text -> normalized pod metrics, on real vLLM 0.32 captures and SGLang-flavoured text."""

from __future__ import annotations

from pathlib import Path

import pytest
from brixmesh.autoscaler.derive import PodMetricsDeriver, histogram_quantile
from brixmesh.autoscaler.flavors import SGLANG, VLLM, detect_flavor
from brixmesh.autoscaler.promtext import MetricsParseError, parse
from brixmesh.common.messages import PodInfo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/vllm-0.32-cpu"
POD = PodInfo(
    pod="p0",
    deployment="d",
    model="tiny-llama",
    engine="vllm",
    endpoint="http://x",
    metrics_url="http://x/metrics",
)


def test_vllm_capture_values() -> None:
    text = (FIXTURES / "metrics_sample_after_load.txt").read_text()
    assert detect_flavor(text) is VLLM
    raw = parse(text, VLLM)
    assert raw.counter(VLLM.prefix_queries) == 5936.0
    assert raw.counter(VLLM.prefix_hits) == 32.0
    assert raw.counter(VLLM.generation_tokens) == 15289.0
    assert raw.counter(VLLM.preemptions) == 66.0
    assert raw.gauge(VLLM.running) == 0.0
    ttft = raw.histogram(VLLM.ttft)
    assert ttft is not None and ttft[float("inf")] == 107.0 and ttft[0.01] == 17.0


def test_deltas_between_idle_and_loaded_captures() -> None:
    idle = parse((FIXTURES / "metrics_sample_idle.txt").read_text(), VLLM)
    loaded = parse((FIXTURES / "metrics_sample_after_load.txt").read_text(), VLLM)
    deriver = PodMetricsDeriver(POD, rate_window_s=100, quantile_window_s=100)
    first = deriver.update(idle, ts=1000.0)
    assert first.prompt_tokens_per_s == 0.0 and not first.stale
    second = deriver.update(loaded, ts=1010.0)
    d_prompt = loaded.counter(VLLM.prompt_tokens) - idle.counter(VLLM.prompt_tokens)  # type: ignore[operator]
    assert second.prompt_tokens_per_s == pytest.approx(d_prompt / 10)
    d_queries = loaded.counter(VLLM.prefix_queries) - idle.counter(VLLM.prefix_queries)  # type: ignore[operator]
    d_hits = loaded.counter(VLLM.prefix_hits) - idle.counter(VLLM.prefix_hits)  # type: ignore[operator]
    assert second.prefix_hit_rate == pytest.approx(d_hits / d_queries)
    assert 0.0 < second.ttft_p50_s <= second.ttft_p90_s <= 0.25
    assert second.engine_flavor == "vllm"


def test_legacy_gpu_cache_usage_fallback() -> None:
    text = 'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.42\nvllm:num_requests_running{engine="0",model_name="m"} 3\n'
    metrics = PodMetricsDeriver(POD).update(parse(text, VLLM), ts=1.0)
    assert metrics.kv_usage == pytest.approx(0.42)
    assert metrics.running == 3


def test_kv_usage_is_averaged_over_engine_ranks_and_counts_summed() -> None:
    text = (
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 5\n'
    )
    metrics = PodMetricsDeriver(POD).update(parse(text, VLLM), ts=1.0)
    assert metrics.kv_usage == pytest.approx(0.4)
    assert metrics.waiting == 7


SGLANG_TEXT = """# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} {running}
sglang:num_queue_reqs{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 4.0
sglang:token_usage{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 0.25
sglang:prompt_tokens_total{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} {prompt}
sglang:cached_tokens_total{cache_source="device",engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} {cached}
sglang:generation_tokens_total{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} {gen}
sglang:time_to_first_token_seconds_bucket{engine_type="unified",le="0.1",model_name="m",pp_rank="0",tp_rank="0"} {t1}
sglang:time_to_first_token_seconds_bucket{engine_type="unified",le="0.2",model_name="m",pp_rank="0",tp_rank="0"} {t2}
sglang:time_to_first_token_seconds_bucket{engine_type="unified",le="+Inf",model_name="m",pp_rank="0",tp_rank="0"} {t2}
"""


def _sglang(running: int, prompt: int, cached: int, gen: int, t1: int, t2: int) -> str:
    return (
        SGLANG_TEXT.replace("{running}", str(running)).replace("{prompt}", str(prompt)).replace("{cached}", str(cached))
        .replace("{gen}", str(gen)).replace("{t1}", str(t1)).replace("{t2}", str(t2))
    )  # fmt: skip


def test_sglang_flavour() -> None:
    first, second = _sglang(1, 100, 0, 50, 0, 0), _sglang(3, 500, 100, 250, 10, 20)
    assert detect_flavor(first) is SGLANG
    deriver = PodMetricsDeriver(POD)
    deriver.update(parse(first, SGLANG), ts=10.0)
    metrics = deriver.update(parse(second, SGLANG), ts=11.0)
    assert (metrics.running, metrics.waiting, metrics.kv_usage) == (3, 4, 0.25)
    assert metrics.prefix_hit_rate == pytest.approx(100 / 400)
    assert metrics.generation_tokens_per_s == pytest.approx(200)
    assert metrics.ttft_p50_s == pytest.approx(0.1)  # 10 of 20 observations are <= 0.1
    assert metrics.engine_flavor == "sglang"


def test_counter_reset_restarts_rates() -> None:
    deriver = PodMetricsDeriver(POD)
    deriver.update(parse(_sglang(0, 1000, 0, 1000, 0, 0), SGLANG), ts=1.0)
    after_restart = deriver.update(parse(_sglang(0, 10, 0, 10, 0, 0), SGLANG), ts=2.0)
    assert after_restart.prompt_tokens_per_s == 0.0 and after_restart.generation_tokens_per_s == 0.0
    later = deriver.update(parse(_sglang(0, 30, 0, 20, 0, 0), SGLANG), ts=3.0)
    assert later.prompt_tokens_per_s == pytest.approx(20)


def test_rates_use_the_rate_window_not_the_first_scrape() -> None:
    deriver = PodMetricsDeriver(POD, rate_window_s=2.0)
    for ts, gen in ((0.0, 0), (1.0, 100), (2.0, 200), (3.0, 1200)):
        metrics = deriver.update(parse(_sglang(0, 0, 0, gen, 0, 0), SGLANG), ts=ts)
    assert metrics.generation_tokens_per_s == pytest.approx((1200 - 100) / 2)


@pytest.mark.parametrize("body", ["", "<html>502 Bad Gateway</html>", "# only comments\n"])
def test_non_metrics_bodies_are_rejected(body: str) -> None:
    with pytest.raises(MetricsParseError):
        parse(body, VLLM)


def test_bad_value_is_rejected() -> None:
    with pytest.raises(MetricsParseError, match="bad sample value"):
        parse('vllm:num_requests_running{engine="0"} abc\n', VLLM)


def test_histogram_quantile() -> None:
    buckets = {0.1: 0.0, 0.2: 50.0, 0.4: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.2)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.9, {1.0: 0.0, float("inf"): 10.0}) == 1.0
    assert histogram_quantile(0.9, {1.0: 0.0, float("inf"): 0.0}) == 0.0
