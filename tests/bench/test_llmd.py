from brixbench.client import RunResult
from brixbench.compare import ContenderRun
from brixbench.engine_metrics import fleet_numbers
from brixbench.llmd import PUBLISHED, SCHEDULERS, llmd_case, ordering_holds, side_by_side
from brixbench.stats import RequestRecord, summarize
from brixbench.text import TextSource


def _run(contender: str, tokens: int, ttft: float) -> ContenderRun:
    records = [RequestRecord("j", 0, 0.0, ok=True, ttft_s=ttft, e2e_s=ttft + 1, output_tokens=tokens)]
    result = RunResult(records, summarize(records, 1.0), fleet_numbers([]), 1.0, [], [])
    return ContenderRun(contender, "llm-d-shared-prefix", "ok", result=result)


def _runs(**numbers: tuple[int, float]) -> list[ContenderRun]:
    return [_run(SCHEDULERS[name], tokens, ttft) for name, (tokens, ttft) in numbers.items()]


def test_ordering_follows_llmd_finding():
    good = _runs(precise=(900, 0.1), approximate=(700, 1.0), **{"load-only": (400, 5.0)}, random=(450, 4.0))
    assert ordering_holds(good) == (True, "holds")
    bad = _runs(precise=(600, 0.1), approximate=(700, 1.0), **{"load-only": (400, 5.0)}, random=(450, 0.5))
    holds, verdict = ordering_holds(bad)
    assert not holds and "throughput precise > approximate" in verdict and "TTFT approximate" in verdict
    assert ordering_holds(good[:2]) == (False, "not every scheduler ran")


def test_side_by_side_prints_published_numbers_next_to_ours():
    table = side_by_side(_runs(precise=(900, 0.1)))
    lines = table.splitlines()
    assert len(lines) == 2 + len(PUBLISHED)
    assert lines[2].startswith("| precise | kv-aware:3,least-kv-cache:2,least-request:2 | 900 | 0.10 |")
    assert "| 8,730 | 0.54 | 0.3 | 0.1 |" in lines[2]
    assert lines[5].startswith("| random | random | n/a |")


def test_llmd_case_scales_lengths_and_capacity_together():
    case = llmd_case(TextSource(), scale=0.05, ladder_time=0.01, qps_scale=1.0)
    assert case.fleet.engines == 8 and case.fleet.model_profile == "qwen3-32b" and case.engine_metrics_on_bus
    assert case.fleet.num_gpu_blocks == 961  # ceil(307,328 x 0.05 / 16)
    assert len(case.jobs) == len(case.arrivals.offsets) > 0
    assert len(case.jobs[0].system.split(" ")) == 300 and case.jobs[0].max_tokens == (50,)
    assert len({job.group for job in case.jobs}) <= 150
