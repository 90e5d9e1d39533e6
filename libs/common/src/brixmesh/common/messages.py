"""msgspec schemas of every message that crosses NATS.

Hot messages (KV events, pod metrics) are ``array_like`` and ``gc=False``: compact on the wire and cheap
to decode. Control messages are plain maps so that taps and humans can read them.
"""

from __future__ import annotations

from typing import Literal

import msgspec

PAYLOAD_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeDecodeError)
"""What decoding untrusted bytes with msgspec raises: invalid UTF-8 in a string is a ``UnicodeDecodeError``, not a
``msgspec.DecodeError`` (``msgspec.ValidationError`` is one)."""

# --- mesh -------------------------------------------------------------------------------------------


class Heartbeat(msgspec.Struct, kw_only=True):
    service: str
    instance_id: str
    version: str
    pid: int
    started_at: float
    uptime_s: float
    ready: bool
    http_url: str = ""
    lease_s: float = 0.0
    """Consumers may forget this instance after this long without a heartbeat (0: the sender does not say)."""


class Ping(msgspec.Struct, kw_only=True):
    """Asks every service instance to answer at once with its :class:`Heartbeat` (``brixmesh status``)."""

    sender: str


# --- pods -------------------------------------------------------------------------------------------

PodEventKind = Literal["added", "ready", "draining", "removed"]
PodRole = Literal["prefill", "decode", "both"]


NODE_LABEL = "brixmesh.io/node"
"""Pod label: the node the pod runs on (its gpu-doctor acts on it)."""
GPU_INDEX_LABEL = "brixmesh.io/gpu-index"
"""Pod label: the index of the GPU the pod runs on, on its node (several: comma-separated). Not the GPU
type, which is ``brixmesh.common.shapes.GPU_LABEL``."""


class PodInfo(msgspec.Struct, kw_only=True):
    """Everything a router, scraper or KV bridge needs to reach one engine pod."""

    pod: str
    deployment: str
    model: str
    engine: str
    role: PodRole = "both"
    endpoint: str
    role_set: str = ""
    """The role set the pod belongs to (``<deployment>-<index>``), empty outside role-set deployments: a
    prefill pod and a decode pod of one role set are paired in replica mode."""
    replica_index: int = 0
    """The pod's index within its role (or deployment, outside role sets)."""
    kv_transfer: str = ""
    """How its KV cache moves between prefill and decode: ``nixl`` (vLLM pull: the prefill response's
    ``kv_transfer_params`` go into the decode request), ``shared-storage`` (no parameters: prefill, then
    decode), ``sglang`` (bootstrap host/port/room, both requests at once); empty: no P/D transfer."""
    bootstrap_port: int = 0
    """SGLang prefill pods: the port of their KV bootstrap server (0: none)."""
    metrics_url: str = ""
    kv_events_endpoint: str = ""
    kv_replay_endpoint: str = ""
    kv_events_topic: str = ""
    block_size: int = 0
    adapters: list[str] = msgspec.field(default_factory=list)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    max_loras: int = 0
    """LoRA adapters one batch may use (``--max-loras``); 0: unknown, or LoRA not enabled."""
    max_cpu_loras: int = 0
    """LoRA adapters the engine keeps loaded (``--max-cpu-loras``, default ``max_loras``); 0: unknown."""
    max_lora_rank: int = 0
    """The largest adapter rank the engine accepts (``--max-lora-rank``); 0: unknown."""


class PodEvent(msgspec.Struct, kw_only=True):
    """A pod's lifecycle change, or its periodic re-announce (``reason="re-announce"``).

    A consumer holds a pod it heard of as a lease of ``lease_s`` seconds, renewed by every event of the pod;
    one not renewed in time is dropped as if removed. ``lease_s`` 0 (older orchestrators): never expires."""

    kind: PodEventKind
    pod: PodInfo
    ts: float
    reason: str = ""
    lease_s: float = 0.0


PodPhase = Literal["starting", "ready", "restarting", "crashloop", "draining", "exited"]


class PodStatus(msgspec.Struct, kw_only=True):
    """One pod as the orchestrator sees it now: ``ready`` means it may receive requests."""

    pod: PodInfo
    phase: PodPhase
    ready: bool
    restarts: int = 0
    pid: int = 0
    created_at: float
    phase_since: float


class PodListRequest(msgspec.Struct, kw_only=True):
    """Asks the orchestrator for its current pods; empty filters match everything."""

    deployment: str = ""
    model: str = ""


class PodList(msgspec.Struct, kw_only=True):
    pods: list[PodStatus]
    ts: float
    orchestrator: str = ""
    lease_s: float = 0.0
    """The lease of each listed pod, as in :class:`PodEvent`."""


# --- metrics ----------------------------------------------------------------------------------------


class PodMetrics(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """One normalized scrape of one engine; ``stale`` marks a failed scrape whose values are not fresh."""

    pod: str
    model: str
    deployment: str
    ts: float
    stale: bool
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    prefix_hit_rate: float = 0.0
    prompt_tokens_per_s: float = 0.0
    generation_tokens_per_s: float = 0.0
    preemptions_per_s: float = 0.0
    ttft_p50_s: float = 0.0
    ttft_p90_s: float = 0.0
    itl_p50_s: float = 0.0
    itl_p90_s: float = 0.0
    engine_flavor: str = "vllm"


class RouterStats(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """Per-second request statistics of one router replica for one model: the autoscaler's leading signal."""

    router: str
    model: str
    ts: float
    window_s: float
    arrivals: int
    completions: int
    failures: int
    in_flight: int
    queued: int
    prompt_tokens: int
    completion_tokens: int
    shapes: list[ShapeCount] = []
    """Completed requests of the window by (input, output) length bucket (``brixmesh.common.shapes``)."""


class ShapeCount(msgspec.Struct, array_like=True, gc=False):
    """Requests whose prompt fell in length bucket ``input_bucket`` and output in ``output_bucket``."""

    input_bucket: int
    output_bucket: int
    count: int


class RoutingEvent(msgspec.Struct, array_like=True, gc=False):
    """One router replica's routing decision (``routed``) or its end (``done``); the other replicas mirror
    them so that in-flight counts and the approximate prefix index are the same everywhere."""

    kind: Literal["routed", "done"]
    request_id: str
    model: str
    pod: str
    prefix_hashes: list[int] = []


class RoutingEventBatch(msgspec.Struct, array_like=True, gc=False):
    router: str
    ts: float
    events: list[RoutingEvent]


# --- adapters ---------------------------------------------------------------------------------------

AdapterPhase = Literal["Pending", "Placed", "Loading", "Running", "Failed"]


class AdapterPlacement(msgspec.Struct, kw_only=True):
    """One registered LoRA adapter: the pods that hold it now (loaded and verified), where it should be."""

    name: str
    base_model: str
    phase: AdapterPhase
    pods: list[str] = msgspec.field(default_factory=list)
    """Pods that serve it: routers send ``model=<name>`` only there."""
    desired: list[str] = msgspec.field(default_factory=list)
    reason: str = ""


class AdapterPlacements(msgspec.Struct, kw_only=True):
    """Every registered adapter and where it is loaded, from the adapter-manager: on every change and every
    announce interval (the whole table each time, so a router that missed messages converges on the next)."""

    manager: str
    ts: float
    adapters: list[AdapterPlacement]


class AdapterPlacementsRequest(msgspec.Struct, kw_only=True):
    """Asks the adapter-manager for its :class:`AdapterPlacements` now (a router starting)."""

    sender: str = ""


# --- scaling ----------------------------------------------------------------------------------------


class ScaleDecision(msgspec.Struct, kw_only=True):
    deployment: str
    role: PodRole = "both"
    current_replicas: int
    desired_replicas: int
    algorithm: str
    reason: str
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    window_state: str = ""
    ts: float
    resent: bool = False
    """The decision in force sent again (unacknowledged, overridden by hand, or a periodic claim of the
    deployment), not a new verdict."""


class RoleStatus(msgspec.Struct, kw_only=True):
    """One role of a role-set deployment, over all its role sets."""

    name: str
    role: PodRole = "both"
    desired_replicas: int
    """Pods of this role wanted in all role sets (pool mode: the role's own count, which a decision
    targeting its function scales)."""
    ready_replicas: int
    pods: int
    last_decision_ts: float = 0.0
    """Pool mode: the ``ts`` of the last scale decision taken for this role (0: none)."""


class RoleSetStatus(msgspec.Struct, kw_only=True):
    """One role set of a role-set deployment."""

    name: str
    """``<deployment>-<index>``, as in ``PodInfo.role_set``."""
    ready: bool
    """Every role has its desired number of ready pods: only then does the role set serve as a whole."""
    current: bool
    """Every pod runs its role's current template (false: it is being replaced by a rolling update)."""
    pods: int


class DeploymentStatus(msgspec.Struct, kw_only=True):
    """The orchestrator's observed fleet of one deployment: published when it changes and every announce
    interval. ``last_decision_ts`` is the ``ts`` of the last scale decision it took (0: none), so an
    autoscaler knows its decision arrived; ``deleted`` is sent once when the deployment goes away.

    A role-set deployment (``mode`` ``replica`` or ``pool``) counts ``desired_replicas`` and
    ``ready_replicas`` in role sets, and details each role and role set; ``mode`` empty: a single-role
    deployment counting pods."""

    deployment: str
    role: PodRole = "both"
    generation: int
    desired_replicas: int
    ready_replicas: int
    pods: int
    """Pods not draining (starting or ready)."""
    fixed_size: bool = False
    """External endpoints: its size follows their list, scale decisions do not apply."""
    last_decision_ts: float = 0.0
    deleted: bool = False
    orchestrator: str = ""
    ts: float
    mode: str = ""
    roles: list[RoleStatus] = msgspec.field(default_factory=list)
    role_sets: list[RoleSetStatus] = msgspec.field(default_factory=list)


# --- GPU profiles ------------------------------------------------------------------------------------


class Slo(msgspec.Struct, kw_only=True, frozen=True):
    """A latency objective: the ``percentile`` of TTFT and of TPOT (time per output token after the
    first) must stay within the bounds; 0 leaves a bound out."""

    ttft_s: float
    tpot_s: float
    percentile: float = 90.0


class ProfileCell(msgspec.Struct, kw_only=True):
    """One (input, output) bucket of a profile: the highest request rate one replica served within the
    SLO at those lengths, and the latencies measured at that rate (0 when no rate tried met the SLO)."""

    input_bucket: int
    output_bucket: int
    max_rate: float
    ttft_s: float = 0.0
    tpot_s: float = 0.0


class GpuProfile(msgspec.Struct, kw_only=True):
    """What one replica of ``model`` on ``gpu`` serves within ``slo``, per length bucket, and what it
    costs; written by ``brixmesh profile``, read by the autoscaler's ``optimizer`` strategy."""

    model: str
    gpu: str
    cost_per_hour: float
    slo: Slo
    cells: list[ProfileCell]
    created_at: float
    source: str = ""
    """The engine that was measured (URL, or the simulator's flags)."""


class PlanRoute(msgspec.Struct, kw_only=True):
    """The share of one length bucket's requests each GPU type should serve (shares sum to 1)."""

    input_bucket: int
    output_bucket: int
    shares: dict[str, float]


class GpuPlan(msgspec.Struct, kw_only=True):
    """The optimizer's plan for one model: replicas per GPU type and where each length bucket goes; the
    router's ``gpu-plan`` scorer follows ``routes`` (pods name their GPU type in the ``brixmesh.io/gpu``
    label)."""

    model: str
    ts: float
    replicas: dict[str, int]
    cost_per_hour: float
    routes: list[PlanRoute]


# --- accelerator health (gpu-doctor) ---------------------------------------------------------------

GpuAction = Literal["observe", "restart_engine", "replace_pod", "cordon_node"]
GpuSeverity = Literal["info", "warning", "critical", "fatal"]


class GpuDecision(msgspec.Struct, kw_only=True):
    """A gpu-doctor's verdict on one signal of one GPU (or one engine) of its node, with its evidence.

    The orchestrator of ``node`` acts on it: ``restart_engine`` drains ``pods`` and starts replacements
    anywhere; ``replace_pod`` also cordons ``gpu`` so replacements land on another GPU; ``cordon_node``
    drains ``pods`` and places no new pod on the node. Acting is idempotent: the doctor sends a decision
    again every few seconds while any of its pods still serves (``resent``)."""

    decision_id: str
    node: str
    gpu: str = ""
    """GPU index on the node ("" when the signal is the engine's, not tied to one GPU's telemetry)."""
    pods: list[str] = msgspec.field(default_factory=list)
    action: GpuAction
    severity: GpuSeverity
    signal: str
    """What was seen: ``xid``, ``ecc_uncorrected``, ``gpu_lost``, ``probe_failures``, ``step_time_regression``..."""
    value: float = 0.0
    reason: str
    """One line for humans: the catalogue entry and why this action (or why it was held back)."""
    evidence: dict[str, str] = msgspec.field(default_factory=dict)
    """The source and readings behind the verdict (first seen, count, baseline, canary outputs...)."""
    doctor: str = ""
    ts: float
    resent: bool = False


# --- KV events (normalized by kv-index; engine hashes as u64) -----------------------------------------


class KvBlockStored(msgspec.Struct, tag="stored", array_like=True, gc=False):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None = None
    medium: str | None = None
    lora_id: int | None = None
    """Only set when the engine gave no ``lora_name`` (older vLLM): keeps adapters apart in the index."""
    cache_salt: str | None = None
    """The request's ``cache_salt`` when the first block is the request's first (``parent_block_hash`` None):
    as in vLLM, the salt is an extra key of that block only, so it reaches later blocks through the chain."""


class KvBlockRemoved(msgspec.Struct, tag="removed", array_like=True, gc=False):
    block_hashes: list[int]
    medium: str | None = None


class KvAllCleared(msgspec.Struct, tag="cleared", array_like=True, gc=False):
    """The engine dropped its whole prefix cache (reset, or restart detected by the bridge)."""


KvEvent = KvBlockStored | KvBlockRemoved | KvAllCleared


class KvEventBatch(msgspec.Struct, array_like=True, gc=False):
    """One or more engine steps' events for one pod; ``engine_seq`` is the engine's sequence number of the last
    step included, ``ts`` the engine's time of the first. ``epoch`` grows each time the bridge starts a pod's
    stream afresh (engine restart, bridge restart); such a stream starts with :class:`KvAllCleared`."""

    pod: str
    model: str
    engine_seq: int
    ts: float
    events: list[KvEvent]
    epoch: int = 0


class KvSnapshot(msgspec.Struct, array_like=True, gc=False):
    """Part ``part`` of ``parts`` of one pod's cached blocks as of its batch (``epoch``, ``engine_seq``).

    A new router loads the newest complete snapshot per pod, then applies only the pod's batches after that
    point. ``blocks`` are parents before children; a block held twice appears twice.
    """

    pod: str
    model: str
    epoch: int
    engine_seq: int
    snapshot_id: int
    part: int
    parts: int
    ts: float
    blocks: list[KvBlockStored]
