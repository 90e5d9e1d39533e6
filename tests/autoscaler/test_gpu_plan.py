"""The optimizer's integer program on cases small enough to check by hand."""

from __future__ import annotations

import time

import pytest
from brixmesh.autoscaler.gpu_plan import GpuOption, Infeasible, capacity_for, solve

SHORT, LONG = (7, 6), (11, 8)  # (in<=128, out<=64) and (in<=2048, out<=256)

# a cheap card good at short requests, a dearer one far better at long ones
A10 = GpuOption("a10", 1.0, {SHORT: 4.0, LONG: 0.5})
L20 = GpuOption("l20", 1.6, {SHORT: 6.0, LONG: 2.0})


def test_short_traffic_goes_to_the_cheaper_card_per_request() -> None:
    # 8 req/s short: a10 needs 2 (cost 2.0), l20 needs 2 (cost 3.2)
    plan = solve({SHORT: 8.0}, [A10, L20])
    assert plan.replicas == {"a10": 2, "l20": 0}
    assert plan.cost_per_hour == pytest.approx(2.0)
    assert plan.routing[SHORT] == {"a10": pytest.approx(8.0)}


def test_long_traffic_goes_to_the_card_with_the_capacity() -> None:
    # 4 req/s long: a10 needs 8 (8.0), l20 needs 2 (3.2)
    plan = solve({LONG: 4.0}, [A10, L20])
    assert plan.replicas == {"a10": 0, "l20": 2}


def test_mixed_traffic_mixes_cards_and_beats_either_alone() -> None:
    # 10 short + 3 long. l20 alone: 10/6 + 3/2 = 3.17 -> 4 (6.4); a10 alone: 2.5 + 6 -> 9 (9.0).
    # 2 a10 + 2 l20 (5.2): l20 takes 2.8 long (1.4 replicas) + 3.6 short (0.6); a10 takes 6.4 short (1.6)
    # + 0.2 long (0.4). Nothing cheaper fits (1 a10 + 2 l20 = 4.2 lacks 0.25 replica; 3 a10 + 1 l20 = 4.6
    # lacks 1.5 a10).
    plan = solve({SHORT: 10.0, LONG: 3.0}, [A10, L20])
    assert plan.replicas == {"a10": 2, "l20": 2}
    assert plan.cost_per_hour == pytest.approx(5.2)
    for cell, load in ((SHORT, 10.0), (LONG, 3.0)):
        assert sum(plan.routing[cell].values()) == pytest.approx(load)


def test_minimum_replicas_are_kept_and_used() -> None:
    # one l20 must stay: it serves 6 of the 8 short req/s, so a single a10 covers the rest
    plan = solve({SHORT: 8.0}, [A10, GpuOption("l20", 1.6, L20.capacity, min_replicas=1)])
    assert plan.replicas == {"a10": 1, "l20": 1}


def test_no_load_costs_only_the_minimums() -> None:
    plan = solve({}, [A10, GpuOption("l20", 1.6, L20.capacity, min_replicas=1)])
    assert plan.replicas == {"a10": 0, "l20": 1}
    assert plan.cost_per_hour == pytest.approx(1.6)


def test_a_bucket_no_card_can_serve_is_infeasible_and_named() -> None:
    with pytest.raises(Infeasible, match=r"in<=4096, out<=256"):
        solve({(12, 8): 1.0}, [A10, L20])


def test_a_bucket_profiled_at_rate_zero_is_not_served_by_that_card() -> None:
    slow = GpuOption("a10", 1.0, {LONG: 0.0})
    with pytest.raises(Infeasible, match="no GPU type meets the SLO"):
        solve({LONG: 1.0}, [slow])
    assert solve({LONG: 1.0}, [slow, L20]).replicas == {"a10": 0, "l20": 1}


def test_load_beyond_max_replicas_is_infeasible_with_what_it_would_need() -> None:
    capped = [GpuOption("a10", 1.0, A10.capacity, max_replicas=2), GpuOption("l20", 1.6, L20.capacity,
                                                                             max_replicas=1)]
    with pytest.raises(Infeasible, match="a10 25, l20 17"):
        solve({SHORT: 100.0}, capped)


def test_capacity_of_an_unprofiled_bucket_comes_from_a_longer_profiled_one() -> None:
    capacity = {(8, 6): 10.0, (11, 6): 3.0, (11, 8): 1.0}
    assert capacity_for(capacity, (7, 5)) == 10.0  # shorter than (8, 6): at least its rate
    assert capacity_for(capacity, (9, 6)) == 3.0  # between 256 and 2048 input: (11, 6) covers it
    assert capacity_for(capacity, (9, 7)) == 1.0
    assert capacity_for(capacity, (12, 6)) == 0.0  # longer than any profile


def test_realistic_bucket_counts_solve_well_under_a_second() -> None:
    cells = [(i, o) for i in range(5, 15) for o in range(3, 11)]  # 80 buckets
    options = [
        GpuOption(gpu, cost, {c: scale * 64 / (c[0] * c[1]) for c in cells})
        for gpu, cost, scale in (("a10", 1.01, 1.0), ("l20", 1.5, 1.6), ("a100", 3.67, 3.5),
                                 ("h100", 7.52, 8.0))
    ]
    load = {c: 0.5 + (c[0] * 7 + c[1]) % 5 for c in cells}
    started = time.perf_counter()
    plan = solve(load, options)
    assert time.perf_counter() - started < 1.0
    assert sum(plan.replicas.values()) > 0
