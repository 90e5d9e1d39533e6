"""Engine-group fields of the deployment spec (backend-neutral) and the engine flags they become."""

from __future__ import annotations

from pathlib import Path

import pytest

from brixmesh.orchestrator.local_backend import LocalBackend
from brixmesh.orchestrator.ray_backend import RayBackend
from brixmesh.orchestrator.spec import SpecError, parallel_args, parse_spec

BASE = {"name": "big", "model": "tiny-llama", "engine": "sim"}


def test_group_shape_becomes_vllm_flags() -> None:
    spec = parse_spec({**BASE, "nodes": 2, "tensor_parallel_size": 4, "pipeline_parallel_size": 2})
    assert parallel_args(spec) == (
        "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2",
        "--distributed-executor-backend", "ray",
    )  # fmt: skip
    assert parallel_args(parse_spec(BASE)) == ()


def test_single_node_tensor_parallel_needs_no_ray() -> None:
    assert parallel_args(parse_spec({**BASE, "tensor_parallel_size": 2})) == ("--tensor-parallel-size", "2")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nodes": 2}, "multiple of nodes"),
        ({"nodes": 3, "tensor_parallel_size": 4}, "multiple of nodes"),
        ({"nodes": 0}, "nodes"),
        ({"tensor_parallel_size": 2, "engine_args": ["--tensor-parallel-size", "2"]}, "remove it"),
        ({"engine_args": ["-tp=2"]}, "-tp is set from the spec"),
        ({"roles": [{"name": "decode", "engine_args": ["--pipeline-parallel-size", "2"]}]}, "remove it"),
        ({"external": [{"url": "http://127.0.0.1:9"}], "tensor_parallel_size": 2}, "external"),
    ],
)
def test_bad_group_shapes_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, **fields})


def test_roles_inherit_the_group_shape() -> None:
    spec = parse_spec({**BASE, "nodes": 2, "tensor_parallel_size": 2, "roles": [{"name": "prefill"}]})
    assert parallel_args(spec.for_role("prefill"))[-1] == "ray"


def test_local_backend_refuses_multi_node_groups(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    with pytest.raises(SpecError, match="BRIXMESH_BACKEND=ray"):
        backend.validate(parse_spec({**BASE, "nodes": 2, "tensor_parallel_size": 2}))


def test_ray_backend_runs_multi_node_groups_of_the_simulator_only(tmp_path: Path) -> None:
    backend = RayBackend(tmp_path)
    backend.validate(parse_spec({**BASE, "nodes": 2, "tensor_parallel_size": 2}))
    with pytest.raises(SpecError, match="CPU build cannot use Ray"):
        backend.validate(parse_spec({**BASE, "engine": "vllm", "nodes": 2, "tensor_parallel_size": 2}))
