import json

import pytest
from brixbench import arrivals
from brixbench.specs import SpecError, parse_arrivals, parse_workload
from brixbench.text import TextSource

SOURCE = TextSource()


def test_workload_specs():
    jobs = parse_workload("shared-prefix:3:2:10:5:7", SOURCE)
    assert len(jobs) == 6 and jobs[0].max_tokens == (7,) and len(jobs[0].system.split(" ")) == 10
    assert len(parse_workload("llmd:0.01", SOURCE)) == 750
    assert all(job.api == "chat" for job in parse_workload("multi-turn:5:20:5:4", SOURCE))
    assert len(parse_workload("sharegpt:12", SOURCE)) == 12


def test_mooncake_spec_reads_a_file_and_replays_its_timestamps(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps({"timestamp": t, "input_length": 8, "output_length": 2, "hash_ids": [1]})
                              for t in (1000, 3000, 2000)))
    jobs = parse_workload(f"mooncake:{path}:2", SOURCE)
    assert len(jobs) == 2
    assert parse_arrivals("trace:2", jobs).offsets == (0.0, 1.0)
    with pytest.raises(SpecError, match="cannot read"):
        parse_workload(f"mooncake:{tmp_path / 'missing'}", SOURCE)


@pytest.mark.parametrize("spec, kind", [("poisson:5", arrivals.OpenLoop), ("gamma:5:2", arrivals.OpenLoop),
                                        ("closed:4", arrivals.ClosedLoop), ("ladder:0.1:0.01", arrivals.OpenLoop),
                                        ("sinusoid:quick_rising:5:10", arrivals.OpenLoop)])
def test_arrival_specs(spec, kind):
    jobs = parse_workload("shared-prefix:2:2:4:2:2", SOURCE)
    assert isinstance(parse_arrivals(spec, jobs), kind)


@pytest.mark.parametrize("spec, message", [
    ("poisson", "needs a rate"), ("poisson:x", "not a number"), ("poisson:-1", "must be > 0"),
    ("gamma:1", "rate and a CV"), ("sinusoid:nope:1:1", "unknown sinusoid preset"), ("trace", "timestamps"),
    ("uniform:3", "unknown arrival process"),
])
def test_bad_arrival_specs_say_what_is_wrong(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_arrivals(spec, parse_workload("shared-prefix:1:1:2:2:2", SOURCE))


def test_bad_workload_specs_say_what_is_wrong():
    with pytest.raises(SpecError, match="unknown workload"):
        parse_workload("lorem", SOURCE)
    with pytest.raises(SpecError, match="too many fields"):
        parse_workload("sharegpt:1:2", SOURCE)
    with pytest.raises(SpecError, match="needs a path"):
        parse_workload("mooncake", SOURCE)
