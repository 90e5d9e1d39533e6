"""Deployment spec validation: every bad input names its field in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from brixmesh.orchestrator.spec import SpecError, load_path, merge_patch, parse_cpu_list, parse_spec, parse_yaml


def test_minimal_spec_gets_defaults() -> None:
    spec = parse_spec({"name": "chat", "model": "tiny-llama"})
    assert (spec.engine, spec.replicas, spec.role, spec.restart_policy) == ("sim", 1, "both", "always")
    assert spec.cpus is None and spec.engine_args == ()


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"engine": "tgi"}, "engine", "unknown engine 'tgi'; expected one of sim, vllm, sglang"),
        ({"replicas": -1}, "replicas", "greater than or equal to 0"),
        ({"name": "Chat_1"}, "name", "'Chat_1' is not a valid name"),
        ({"role": "encode"}, "role", "'prefill', 'decode' or 'both'"),
        ({"restart_policy": "sometimes"}, "restart_policy", "'always', 'on-failure' or 'never'"),
        ({"engine_args": ["--port", "9000"]}, "engine_args", "--port is set by the orchestrator"),
        ({"engine_args": "--kv-events-config={}"}, "engine_args", "--kv-events-config is set by the orchestrator"),
        ({"cpus": "3-1"}, "cpus", "range '3-1' runs backwards"),
        ({"cpus": "a,b"}, "cpus", "not a CPU list"),
        ({"cpus_per_pod": 1}, "cpus_per_pod", "needs cpus"),
        ({"cpus": "0", "cpus_per_pod": 2}, "cpus_per_pod", "2 is more than the 1 CPUs"),
        ({"readiness": {"path": "health"}}, "readiness.path", "must start with '/'"),
        ({"readiness": {"timeout_s": 0}}, "readiness.timeout_s", "greater than 0"),
        ({"labels": {"bad key": "x"}}, "labels", "label key 'bad key'"),
        ({"replica": 2}, "replica", "unknown field 'replica'"),
        ({"external": [{"url": "http://e:1"}], "replicas": 2}, "external", "must equal the number of external"),
        ({"external": [{"url": "http://e:1"}], "cpus": "0"}, "external", "cpus does not apply to external"),
        ({"external": [{"url": "e:1"}]}, "external.0.url", "expected http://host:port"),
        ({"external": [{"url": "http://e:1", "kv_events": "e:2"}]}, "external.0.kv_events", "expected tcp://"),
    ],
)
def test_bad_fields_are_named(fields: dict, param: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "chat", "model": "tiny-llama", **fields}, source="chat.yaml")
    assert caught.value.param == param
    assert message in str(caught.value)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("chat.yaml: deployment")


def test_missing_model_and_non_mapping() -> None:
    with pytest.raises(SpecError, match="model: required field missing"):
        parse_spec({"name": "chat"})
    with pytest.raises(SpecError, match="a deployment must be a mapping of fields, got list"):
        parse_spec(["chat"])


def test_engine_args_string_is_split_like_a_shell_and_cpus_parse() -> None:
    spec = parse_spec({"name": "a", "model": "m", "engine_args": "--max-num-seqs 4 --seed '7'", "cpus": "2,0-1"})
    assert spec.engine_args == ("--max-num-seqs", "4", "--seed", "7")
    assert spec.cpus == (0, 1, 2)
    assert parse_cpu_list("0-3,6") == [0, 1, 2, 3, 6]


def test_yaml_shapes_single_list_documents_and_wrapper() -> None:
    one = "name: a\nmodel: m\n"
    assert [s.name for s in parse_yaml(one)] == ["a"]
    assert [s.name for s in parse_yaml("- {name: a, model: m}\n- {name: b, model: m}\n")] == ["a", "b"]
    assert [s.name for s in parse_yaml(one + "---\nname: b\nmodel: m\n")] == ["a", "b"]
    assert [s.name for s in parse_yaml("deployments:\n  - {name: c, model: m}\n")] == ["c"]


def test_yaml_errors_are_one_line_with_position() -> None:
    with pytest.raises(SpecError, match=r"x.yaml: invalid YAML: .*\(line \d+, column \d+\)$"):
        parse_yaml("name: a\nmodel: [m\n", source="x.yaml")
    with pytest.raises(SpecError, match="deployment 'a' is defined twice"):
        parse_yaml("- {name: a, model: m}\n- {name: a, model: n}\n")


def test_load_path_reads_a_directory_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("name: b\nmodel: m\n")
    (tmp_path / "a.yml").write_text("name: a\nmodel: m\n")
    (tmp_path / "notes.txt").write_text("not a spec")
    assert [s.name for s in load_path(tmp_path)] == ["a", "b"]
    with pytest.raises(SpecError, match="cannot read"):
        load_path(tmp_path / "missing.yaml")


def test_template_ignores_replicas_and_drain_grace() -> None:
    a = parse_spec({"name": "a", "model": "m", "replicas": 1})
    assert a.template() == parse_spec({"name": "a", "model": "m", "replicas": 5, "drain_grace_s": 1}).template()
    assert a.template() != parse_spec({"name": "a", "model": "m", "engine_args": ["--seed", "1"]}).template()


def test_merge_patch_merges_mappings_and_null_resets() -> None:
    current = {"replicas": 1, "readiness": {"path": "/health", "timeout_s": 5}, "labels": {"a": "1"}}
    patched = merge_patch(current, {"readiness": {"timeout_s": 9}, "labels": None, "replicas": 3})
    assert patched == {"replicas": 3, "readiness": {"path": "/health", "timeout_s": 9}}


def test_external_endpoints_set_replicas() -> None:
    spec = parse_spec({"name": "a", "model": "m", "engine": "sglang",
                       "external": [{"url": "http://e0:30000/"}, {"url": "http://e1:30000"}]})
    assert spec.replicas == 2 and spec.is_external
    assert [e.url for e in spec.external] == ["http://e0:30000", "http://e1:30000"]


def test_shipped_examples_are_valid() -> None:
    examples = Path(__file__).resolve().parents[2] / "services/orchestrator/examples"
    names = [spec.name for path in sorted(examples.glob("*.yaml")) for spec in load_path(path)]
    assert names == ["default", "chat", "chat-vllm"]
