"""Role-set deployment specs: roles, mode, update policy, and what each role's pods are launched from."""

from __future__ import annotations

import json

import pytest

from brixmesh.orchestrator.spec import SpecError, kv_transfer_of, parse_spec, parse_yaml

NIXL_PRODUCER = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_producer"})
PD_YAML = f"""
name: pd
model: tiny-llama
engine_args: ["--max-num-seqs", "8"]
env: {{SHARED: "1"}}
replicas: 2
roles:
  - name: prefill
    engine_args: ["--kv-transfer-config", '{NIXL_PRODUCER}']
    resources: {{cpus: "0-1", cpus_per_pod: 1, memory: 2Gi}}
  - name: decode
    replicas: 2
    env: {{SHARED: "2"}}
    upgrade_order: -1
  - name: mixed
    replicas: 0
update: {{max_surge: 2, max_unavailable: 1, role_order: interleaved}}
"""


def test_roles_take_their_function_from_their_name_and_share_the_deployment_fields() -> None:
    (spec,) = parse_yaml(PD_YAML)
    assert [(r.name, r.role, r.replicas) for r in spec.roles] == [
        ("prefill", "prefill", 1), ("decode", "decode", 2), ("mixed", "both", 0)
    ]  # fmt: skip
    assert [r.name for r in spec.roles_in_upgrade_order()] == ["decode", "prefill", "mixed"]
    prefill = spec.for_role("prefill")
    assert (prefill.role, prefill.cpus, prefill.cpus_per_pod, prefill.roles) == ("prefill", (0, 1), 1, ())
    assert prefill.engine_args == ("--max-num-seqs", "8", "--kv-transfer-config", NIXL_PRODUCER)
    assert spec.for_role("decode").env == {"SHARED": "2"}
    update = spec.update
    assert (update.max_surge, update.max_unavailable, update.role_order) == (2, 1, "interleaved")


def test_a_spec_survives_its_own_json_dump() -> None:
    (spec,) = parse_yaml(PD_YAML)
    assert parse_spec(spec.model_dump(mode="json")) == spec
    assert parse_spec(json.loads(json.dumps(spec.to_dict()))) == spec


def test_only_the_changed_roles_template_changes() -> None:
    (spec,) = parse_yaml(PD_YAML)
    changed = parse_spec({**spec.to_dict(), "roles": [
        spec.roles[0].model_dump(mode="json"),
        {**spec.roles[1].model_dump(mode="json"), "engine_args": ["--max-num-seqs", "4"]},
        spec.roles[2].model_dump(mode="json"),
    ]})  # fmt: skip
    assert changed.role_template("prefill") == spec.role_template("prefill")
    assert changed.role_template("decode") != spec.role_template("decode")
    scaled = parse_spec({**spec.to_dict(), "replicas": 5})
    assert all(scaled.role_template(r.name) == spec.role_template(r.name) for r in spec.roles)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "pool"}, "mode and update apply to deployments with roles"),
        ({"update": {"max_surge": 3}}, "mode and update apply to deployments with roles"),
        ({"roles": [{"name": "a"}, {"name": "a"}]}, "roles: role 'a' is listed twice"),
        ({"roles": [{"name": "A"}]}, "roles.0.name: 'A' is not a valid role name"),
        ({"roles": [{"name": "prefill-workers"}]}, "is not a valid role name: 1-12"),
        ({"roles": [{"name": "a", "role": "encode"}]}, "roles.0.role"),
        ({"roles": [{"name": "a", "engine_args": ["--host", "x"]}]}, "--host is set by the orchestrator"),
        ({"roles": [{"name": "a", "engine_args": ["--trust-remote-code"]}]},
         "--trust-remote-code is not allowed"),
        ({"roles": [{"name": "a", "env": {"LD_PRELOAD": "x"}}]}, "LD_PRELOAD is not allowed"),
        ({"roles": [{"name": "a", "resources": {"memory": "lots"}}]}, "not a memory quantity"),
        ({"roles": [{"name": "a", "resources": {"cpus_per_pod": 1}}]}, "needs cpus"),
        ({"roles": [{"name": "a"}], "cpus": "0"}, "cpus does not apply to deployments with roles"),
        ({"roles": [{"name": "a"}], "role": "decode"}, "role does not apply to deployments with roles"),
        ({"roles": [{"name": "a"}], "mode": "pool", "replicas": 2}, "a pool-mode deployment is one role set"),
        ({"roles": [{"name": "a"}], "replicas": 100}, "at most 100 role sets"),
        ({"roles": [{"name": "a"}], "update": {"max_surge": 0}}, "cannot both be 0"),
        ({"roles": [{"name": "a"}], "update": {"role_order": "random"}}, "update.role_order"),
    ],
)
def test_bad_role_specs_are_refused_in_one_line(fields: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec({"name": "pd", "model": "m", **fields})
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("engine", "args", "expected"),
    [
        ("vllm", ["--kv-transfer-config", NIXL_PRODUCER], ("nixl", 0)),
        ("sim", [f"--kv-transfer-config={json.dumps({'kv_connector': 'ExampleConnector'})}"],
         ("shared-storage", 0)),
        ("vllm", ["--kv-transfer-config", json.dumps({"kv_connector": "MyTierConnector"})], ("", 0)),
        ("vllm", ["--kv-transfer-config", "not json"], ("", 0)),
        ("vllm", ["--max-num-seqs", "8"], ("", 0)),
        ("sglang", ["--disaggregation-mode", "prefill"], ("sglang", 8998)),
        ("sim", ["--disaggregation-mode", "decode", "--disaggregation-bootstrap-port", "9000"],
         ("sglang", 9000)),
        ("sglang", [], ("", 0)),
    ],
)
def test_kv_transfer_kind_comes_from_the_engine_args(
    engine: str, args: list[str], expected: tuple[str, int]
) -> None:
    assert kv_transfer_of(engine, args) == expected
