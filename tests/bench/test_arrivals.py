import statistics

import pytest
from brixbench import arrivals


def _gaps(offsets):
    return [b - a for a, b in zip((0.0, *offsets[:-1]), offsets)]


def test_poisson_mean_rate_and_determinism():
    a = arrivals.poisson(20.0, 5000, seed=1)
    assert a == arrivals.poisson(20.0, 5000, seed=1)
    gaps = _gaps(a.offsets)
    assert statistics.mean(gaps) == pytest.approx(0.05, rel=0.05)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.08)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_has_the_asked_coefficient_of_variation(cv):
    gaps = _gaps(arrivals.gamma(10.0, cv, 20000, seed=2).offsets)
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.08)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(cv, rel=0.12)


def test_stage_ladder_follows_each_stage_rate():
    stages = (arrivals.Stage(10, 100), arrivals.Stage(50, 100))
    offsets = arrivals.stage_ladder(stages, seed=3).offsets
    first = sum(1 for t in offsets if t < 100)
    second = sum(1 for t in offsets if 100 <= t < 200)
    assert first == pytest.approx(1000, rel=0.1) and second == pytest.approx(5000, rel=0.1)
    assert offsets == tuple(sorted(offsets)) and offsets[-1] <= 200
    assert len(arrivals.stage_ladder(stages, n=30, seed=3).offsets) == 30


def test_llmd_ladder_shape():
    assert arrivals.LLMD_LADDER[0] == arrivals.Stage(15, 50)
    qps = [s.qps for s in arrivals.LLMD_LADDER[1:]]
    assert qps[0] == 3 and qps[-1] == 60 and qps == sorted(qps)
    assert all(20 <= s.duration_s <= 38 for s in arrivals.LLMD_LADDER[1:])


def test_sinusoid_rising_preset_rises_and_fluctuating_one_falls():
    rising = arrivals.SINUSOID_PRESETS["slow_rising"]
    values = [arrivals.sinusoid_value(rising, 10.0, t, 100.0) for t in range(0, 100, 5)]
    assert values == sorted(values) and values[0] == pytest.approx(10.0) and values[-1] > 14.9
    severe = arrivals.SINUSOID_PRESETS["severe_fluctuation"]
    wave = [arrivals.sinusoid_value(severe, 10.0, t / 10, 120.0) for t in range(1200)]
    assert max(wave) == pytest.approx(15.0, abs=0.1) and min(wave) == pytest.approx(5.0, abs=0.1)


def test_sinusoid_arrivals_average_the_mean_rate():
    a = arrivals.sinusoid("slight_fluctuation", 20.0, 200.0, seed=4)
    assert len(a.offsets) == pytest.approx(4000, rel=0.08)
    with pytest.raises(ValueError, match="unknown sinusoid preset"):
        arrivals.sinusoid("nope", 1.0, 1.0)


def test_trace_rebases_and_speeds_up():
    assert arrivals.trace([10.0, 12.0, 11.0], speedup=2.0).offsets == (0.0, 1.0, 0.5)


def test_invalid_rates_are_refused():
    with pytest.raises(ValueError, match="rate must be > 0"):
        arrivals.poisson(0, 3)
    with pytest.raises(ValueError, match="cv > 0"):
        arrivals.gamma(1.0, 0.0, 3)
    with pytest.raises(ValueError, match="concurrency"):
        arrivals.ClosedLoop(0)
