from __future__ import annotations

from pathlib import Path

import pytest
from brixmesh.autoscaler.spec import SpecError, load_spec_file, parse_spec


def test_defaults_follow_aibrix() -> None:
    spec = parse_spec({"name": "a", "deployment": "d"})
    assert (spec.strategy, spec.stable_window_s, spec.panic_window_s, spec.panic_threshold) == (
        "kpa",
        180,
        60,
        2.0,
    )
    assert (spec.max_scale_up_rate, spec.max_scale_down_rate) == (2.0, 2.0)
    assert (spec.scale_up_tolerance, spec.scale_down_tolerance) == (0.1, 0.1)
    assert (spec.scale_up_cooldown_s, spec.scale_down_cooldown_s, spec.scale_to_zero) == (0, 300, False)
    assert [(m.metric, m.target) for m in spec.metrics] == [("kv_usage", 0.5)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"name": "a", "deployment": "d", "strategy": "vpa"},
            "strategy: Input should be 'hpa', 'kpa' or 'apa'",
        ),
        (
            {"name": "a", "deployment": "d", "min_replicas": 5, "max_replicas": 2},
            "min_replicas (5) > max_replicas (2)",
        ),
        ({"name": "a", "deployment": "d", "min_replicas": 0}, "min_replicas 0 needs scale_to_zero: true"),
        (
            {"name": "a", "deployment": "d", "metrics": [{"metric": "gpu_temp", "target": 1}]},
            "unknown pod metric 'gpu_temp'",
        ),
        (
            {"name": "a", "deployment": "d", "stable_window_s": 10, "panic_window_s": 20},
            "must not exceed stable_window_s",
        ),
        (
            {"name": "a", "deployment": "d", "panik_window_s": 20},
            "panik_window_s: Extra inputs are not permitted",
        ),
        ({"name": "a b", "deployment": "d"}, "name 'a b' must be"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(data: object, message: str) -> None:
    with pytest.raises(SpecError, match=None) as info:
        parse_spec(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_path_name_must_match_body() -> None:
    with pytest.raises(SpecError, match="does not match"):
        parse_spec({"name": "x", "deployment": "d"}, name="y")
    assert parse_spec({"deployment": "d"}, name="y").name == "y"


def test_yaml_file_forms(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        "autoscalers:\n  - {name: a, deployment: d, strategy: apa}\n  - {name: b, deployment: e}\n"
    )
    assert [s.name for s in load_spec_file(path)] == ["a", "b"]
    path.write_text("name: a\ndeployment: d\nmin_replicas: 3\nmax_replicas: 1\n")
    with pytest.raises(SpecError, match=r"a.yaml: autoscaler 'a': min_replicas \(3\) > max_replicas"):
        load_spec_file(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec_file(path)
