"""Step time of an engine group: tensor and pipeline parallelism over several GPUs, possibly several nodes.

The ranks split the work: FLOPs and weight/KV traffic are the roofline model's on a GPU ``tp x pp`` times
as fast, the KV cache spans every rank's memory. On top come the group's collectives, which the single-GPU
model does not have:

- tensor parallelism: two all-reduces of the step's activations per layer (attention and MLP outputs),
  ring algorithm: ``2 (tp - 1) / tp`` of the bytes cross each link, plus a latency per hop;
- pipeline parallelism: the activations cross each of the ``pp - 1`` stage boundaries once.

A collective runs at NVLink/PCIe speed (the GPU profile's) while its ranks share a node and at the
interconnect's (``--interconnect-bandwidth``, InfiniBand/Ethernet) once it spans nodes: a TP group larger
than a node, or a stage boundary between nodes. One step is one batch through every stage (vLLM's
default without micro-batching), so pipeline stages add up rather than overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from brixmesh.engine_sim.timing import GIB, RooflineModel, StepShape

INTRA_NODE_GBPS = {"h100": 450.0, "a100": 300.0, "l20": 32.0, "a10": 32.0}
"""Per-direction GPU-to-GPU bandwidth inside a node, GB/s: NVLink 4/3 (SXM), PCIe 4.0 x16 otherwise."""
INTRA_NODE_HOP_S = 5e-6
INTER_NODE_HOP_S = 20e-6
ACTIVATION_BYTES = 2  # bf16


@dataclass(frozen=True, slots=True)
class GroupShape:
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpus_per_node: int = 8
    interconnect_gbps: float = 50.0
    """Between nodes, per direction, GB/s (50: one 400 Gb/s NIC per GPU)."""

    @property
    def world(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def nodes(self) -> int:
        return -(-self.world // self.gpus_per_node)


@dataclass(frozen=True, slots=True)
class ParallelRooflineModel(RooflineModel):
    group: GroupShape = GroupShape()

    def step_seconds(self, shape: StepShape) -> float:
        world = self.group.world
        pooled = replace(
            self.gpu, peak_tflops=self.gpu.peak_tflops * world, bandwidth_tbps=self.gpu.bandwidth_tbps * world
        )
        return RooflineModel(pooled, self.model).step_seconds(shape) + self.communication_seconds(shape)

    def communication_seconds(self, shape: StepShape) -> float:
        group, m = self.group, self.model
        activations = (shape.num_prefill_tokens + len(shape.decode_contexts)) * m.query_heads * m.head_dim
        activation_bytes = activations * ACTIVATION_BYTES
        seconds = 0.0
        tp = group.tensor_parallel
        if tp > 1:
            across_nodes = tp > group.gpus_per_node
            bandwidth, hop = self._link(across_nodes)
            all_reduce = 2 * (tp - 1) / tp * activation_bytes / bandwidth + 2 * (tp - 1) * hop
            seconds += 2 * m.layers * all_reduce
        for boundary in range(1, group.pipeline_parallel):
            # stage s holds ranks [s*tp, (s+1)*tp): the boundary crosses nodes where those differ
            last_rank = boundary * tp - 1
            across_nodes = last_rank // group.gpus_per_node != (last_rank + 1) // group.gpus_per_node
            bandwidth, hop = self._link(across_nodes)
            seconds += activation_bytes / bandwidth + hop
        return seconds

    def kv_cache_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        world = self.group.world
        per_gpu = gpu_memory_utilization * self.gpu.memory_gib * GIB - 2 * GIB  # activations
        free = per_gpu * world - self.model.weight_bytes
        return max(0, int(free // self.model.kv_bytes_per_token))

    def _link(self, across_nodes: bool) -> tuple[float, float]:
        """(bytes/s, seconds per hop) of one link between two ranks."""
        if across_nodes:
            return self.group.interconnect_gbps * 1e9, INTER_NODE_HOP_S
        return INTRA_NODE_GBPS.get(self.gpu.name, 32.0) * 1e9, INTRA_NODE_HOP_S


def group_step_model(base: object, group: GroupShape) -> object:
    """``base`` for a single-GPU engine or a non-roofline perf model (their times are given, not derived);
    else its group version."""
    if group.world == 1 or not isinstance(base, RooflineModel):
        return base
    return ParallelRooflineModel(base.gpu, base.model, group)
