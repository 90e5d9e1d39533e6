"""Step times of simulated engine groups (tensor/pipeline parallel, over one or several nodes) and the
vLLM flags that shape them."""

from __future__ import annotations

import pytest
from brixmesh.engine_sim.cli import CliError, build_parser, configs_from_args
from brixmesh.engine_sim.parallel import GroupShape, ParallelRooflineModel, group_step_model
from brixmesh.engine_sim.timing import PerTokenModel, RooflineModel, StepShape, gpu_profile
from brixmesh.engine_sim.timing import model_profile_named as model

DECODE_BATCH = StepShape([], [2048] * 64)
PREFILL = StepShape([(4096, 0)], [])


def single() -> RooflineModel:
    return RooflineModel(gpu_profile("h100"), model("qwen3-32b"))


def group(tp: int = 1, pp: int = 1, gpus_per_node: int = 8, interconnect_gbps: float = 50.0) -> RooflineModel:
    shape = GroupShape(tp, pp, gpus_per_node, interconnect_gbps)
    return ParallelRooflineModel(gpu_profile("h100"), model("qwen3-32b"), shape)


def test_tensor_parallel_in_a_node_speeds_up_a_step() -> None:
    assert group(tp=2).step_seconds(DECODE_BATCH) < 0.7 * single().step_seconds(DECODE_BATCH)
    assert group(tp=4).step_seconds(PREFILL) < group(tp=2).step_seconds(PREFILL)


def test_collectives_across_nodes_cost_interconnect_time() -> None:
    in_node = group(tp=4)
    across = group(tp=4, gpus_per_node=2)  # the TP group spans 2 nodes: all-reduces over the network
    assert across.step_seconds(PREFILL) > in_node.step_seconds(PREFILL) * 1.2
    slow_network = group(tp=4, gpus_per_node=2, interconnect_gbps=12.5)
    assert slow_network.communication_seconds(PREFILL) == pytest.approx(
        4 * across.communication_seconds(PREFILL), rel=0.1
    )


def test_pipeline_stage_boundaries_between_nodes_use_the_interconnect() -> None:
    # tp=2 per stage, 2 GPUs per node: the only boundary of pp=2 lies between the nodes
    across = group(tp=2, pp=2, gpus_per_node=2).communication_seconds(PREFILL)
    inside = group(tp=2, pp=2, gpus_per_node=4).communication_seconds(PREFILL)
    assert across > inside


def test_kv_cache_spans_every_rank() -> None:
    assert group(tp=2, pp=2).kv_cache_tokens() > 4 * single().kv_cache_tokens()


def test_given_times_and_single_gpus_are_left_alone() -> None:
    per_token = PerTokenModel(0.005, 0.01, 0.0)
    assert group_step_model(per_token, GroupShape(4, 1)) is per_token
    one_gpu = RooflineModel(gpu_profile("h100"), model("llama-8b"))
    assert group_step_model(one_gpu, GroupShape()) is one_gpu


def test_vllm_group_flags_shape_the_engine() -> None:
    args = build_parser().parse_args([
        "serve", "tiny-llama", "-tp", "2", "--pipeline-parallel-size", "2",
        "--distributed-executor-backend", "ray", "--gpus-per-node", "2", "--interconnect-bandwidth", "25",
    ])  # fmt: skip
    (config,) = configs_from_args(args)
    assert config.group == GroupShape(2, 2, 2, 25.0)
    with pytest.raises(CliError, match="--tensor-parallel-size must be >= 1"):
        configs_from_args(build_parser().parse_args(["serve", "tiny-llama", "-tp", "0"]))
