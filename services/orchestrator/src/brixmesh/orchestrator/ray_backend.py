"""The Ray backend: every pod is an engine group on a Ray cluster, placed all at once or not at all.

A pod of a spec with ``nodes: N`` is one placement group of N bundles (``STRICT_SPREAD``: one per node)
and one actor per bundle. The head actor (rank 0) starts the engine process on its node, bound to that
node's address as Ray knows it (127.0.0.1 in a loopback cluster), with its HTTP server and a tcp:// KV-event
publisher; the orchestrator probes it and announces the pod on ``pods.*`` like any other. The other ranks
hold their node's share of the group (the simulator models their work from the parallel sizes; vLLM's Ray
executor would place its workers in the group).

A group serves whole or not at all: when any of its actors dies (its process, its node) or the engine
exits, the pod is reported ``removed`` and its actors and placement group are torn down; the orchestrator
then creates a new group in its place, as for any missing pod. Scaling adds or drains whole groups.

Actors and placement groups are detached and named after their pod (namespace ``ray_namespace``), so they
outlive an orchestrator restart: :meth:`RayBackend.recover` adopts the complete groups it finds and tears
down the rest. A local cluster the backend started itself (no ``ray_address``) ends with the orchestrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ray
from brixmesh.common.messages import NODE_LABEL, PodEvent
from brixmesh.common.ports import free_port
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from brixmesh.orchestrator.backend import (
    Pod, PodTable, Unschedulable, announce, free_slot, new_pod_name, set_phase,
)
from brixmesh.orchestrator.check import check_runnable
from brixmesh.orchestrator.cordons import Cordons
from brixmesh.orchestrator.launch import KV_TOPIC, PodPlacement, build_launch
from brixmesh.orchestrator.local_backend import place_in_role_set, pod_info
from brixmesh.orchestrator.spec import DeploymentSpec, RoleMember, SpecError

log = logging.getLogger(__name__)

GROUP_NODES_LABEL = "ray_nodes"
"""Pod label: the Ray node ids (first 12 hex digits) of the group's ranks, head first."""
_PG_PREFIX = "brixmesh:"
_PR_SET_PDEATHSIG = 1
_ACTOR_START_S = 120.0
"""A new actor's first answer waits for a worker process: seconds normally, much longer on a loaded host."""


@dataclass(frozen=True)
class RayPlacement(PodPlacement):
    """A pod placement on a Ray node: endpoints on the node's address, KV events over tcp (consumers may
    run on other machines, where an ipc:// socket cannot be reached)."""

    host: str = "127.0.0.1"
    kv_port: int = 0

    @property
    def kv_events_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.kv_port}"

    @property
    def kv_replay_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.replay_port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


@dataclass(frozen=True)
class EngineStarted:
    base_url: str
    kv_events: str
    kv_replay: str
    readiness_url: str
    readiness_timeout_s: float
    stop_grace_s: float
    block_size: int
    pid: int


@dataclass(frozen=True)
class GroupRecord:
    """What the head actor keeps of its pod, for a later orchestrator to adopt it."""

    pod: Pod
    readiness_url: str


class GroupMember:
    """One rank of an engine group, on its bundle's node. Rank 0 runs the engine process."""

    def __init__(self, pod: str, rank: int) -> None:
        self._pod = pod
        self._rank = rank
        self._process: subprocess.Popen[bytes] | None = None
        self._runtime_dir: Path | None = None
        self._record: GroupRecord | None = None

    def node(self) -> tuple[str, str]:
        """This rank's Ray node id and address."""
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def start_engine(self, spec: DeploymentSpec, slot: int) -> EngineStarted:
        host = ray.util.get_node_ip_address()
        self._runtime_dir = Path(tempfile.mkdtemp(prefix=f"brixmesh-{self._pod}-"))
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port(host))
        http_port, replay_port, kv_port = sorted(ports)
        placement = RayPlacement(
            pod=self._pod, slot=slot, http_port=http_port, replay_port=replay_port,
            runtime_dir=self._runtime_dir, state_dir=self._runtime_dir, host=host, kv_port=kv_port,
        )  # fmt: skip
        launch = build_launch(spec, placement)
        env = dict(os.environ)
        for key, value in launch.env.items():
            if value:
                env[key] = value
            else:
                env.pop(key, None)
        log_dir = Path(tempfile.gettempdir()) / "brixmesh-engine-logs"  # kept after the pod, as locally
        log_dir.mkdir(exist_ok=True)
        with open(log_dir / f"{self._pod}.log", "ab") as log_file:
            self._process = subprocess.Popen(
                launch.argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        return EngineStarted(
            base_url=placement.base_url, kv_events=placement.kv_events_endpoint,
            kv_replay=placement.kv_replay_endpoint, readiness_url=launch.readiness_url,
            readiness_timeout_s=launch.readiness_timeout_s, stop_grace_s=launch.stop_grace_s,
            block_size=launch.block_size, pid=self._process.pid,
        )  # fmt: skip

    def engine_exit_code(self) -> int | None:
        """None while the engine runs (or on a rank without one)."""
        return None if self._process is None else self._process.poll()

    def stop_engine(self, grace_s: float) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def remember(self, record: GroupRecord) -> None:
        self._record = record

    def record(self) -> GroupRecord | None:
        return self._record


def _die_with_parent() -> None:
    """In the engine's child process: SIGKILL when the actor's process dies (its node lost), so no engine
    outlives its group."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class GroupLost(Exception):
    """An engine group cannot serve any more (a rank or the engine is gone)."""


class RayBackend(PodTable):
    kind = "ray"
    spans_nodes = False

    def __init__(
        self,
        state_dir: Path,
        *,
        address: str = "",
        namespace: str = "brixmesh",
        cpus_per_rank: float = 1.0,
        node_name: str = "ray",
        check_interval_s: float = 1.0,
        check_timeout_s: float = 10.0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.node_name = node_name
        self.cordons = Cordons(self.state_dir / "cordons.json")
        self.address = address
        self.namespace = namespace
        self.cpus_per_rank = cpus_per_rank
        self._check_interval_s = check_interval_s
        self._check_timeout_s = check_timeout_s
        self._pods: dict[str, Pod] = {}
        self._groups: dict[str, list[Any]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._readiness: dict[str, str] = {}
        self._changes: asyncio.Queue[PodEvent] = asyncio.Queue()
        self._started_cluster = False
        self._member = ray.remote(GroupMember)

    def connect(self) -> None:
        """Join the cluster at ``address`` or start a local one (blocking, seconds)."""
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.address:
            ray.init(address=self.address, namespace=self.namespace, log_to_driver=False)
            return
        ray.init(
            address="local", namespace=self.namespace, include_dashboard=False, log_to_driver=False,
            object_store_memory=100 << 20, _node_ip_address="127.0.0.1",
        )  # fmt: skip
        self._started_cluster = True

    # --- PodBackend ----------------------------------------------------------------------------------

    def validate(self, spec: DeploymentSpec) -> None:
        if spec.nodes > 1 and spec.engine != "sim":
            raise SpecError(
                f"nodes: multi-node groups of engine {spec.engine!r} are not supported yet: the engine "
                "would have to place its workers in the group's placement group (vLLM's CPU build cannot "
                "use Ray at all, docs/ray.md); the simulator models them", "nodes",
            )
        check_runnable(spec)

    async def create_pod(
        self, spec: DeploymentSpec, generation: int, member: RoleMember | None = None
    ) -> Pod:
        node_cordon = self.cordons.node_cordon(self.node_name)
        if node_cordon is not None:
            raise Unschedulable(f"cluster {self.node_name} is cordoned: {node_cordon.reason}")
        role_name = ""
        if member is not None:
            spec, role_name = spec.for_role(member.role), member.role
        prefix = spec.name if member is None else f"{spec.name}-{member.role_set}-{role_name}"
        name = new_pod_name(prefix, self._pods)
        info = pod_info(spec, name, self.kind, "", kv_events="", kv_replay="", block_size=0,
                        engine_argv=spec.engine_args)  # fmt: skip
        if member is not None:
            place_in_role_set(info, member, spec.engine_args)
        pod = Pod(info=info, generation=generation, slot=free_slot(self._pods.values(), spec.name, role_name))
        self._pods[name] = pod
        bundles = [{"CPU": self.cpus_per_rank}] * spec.nodes
        group = placement_group(
            bundles, strategy="STRICT_SPREAD" if spec.nodes > 1 else "PACK", name=_PG_PREFIX + name,
            lifetime="detached",
        )  # fmt: skip
        self._watch(pod, self._start_group(pod, spec, group))
        return pod

    async def drain_pod(self, name: str, reason: str) -> None:
        pod = self._pods.get(name)
        if pod is None or pod.draining:
            return
        set_phase(pod, "draining")
        announce(self._changes, "draining", pod, reason)
        await self._remember(pod)

    async def delete_pod(self, name: str, reason: str) -> None:
        pod = self._pods.get(name)
        if pod is None:
            return
        await self._stop_watching(name)
        await self._tear_down(name, grace_s=pod_grace_s(pod))
        self._pods.pop(name, None)
        announce(self._changes, "removed", pod, reason)


    async def recover(self) -> None:
        """Connect, adopt every complete group an earlier orchestrator left (its head holds the pod's
        record, every rank answers, the engine runs), and tear down the rest of this namespace's groups."""
        self.connect()
        by_pod: dict[str, dict[int, Any]] = {}
        for actor_name in ray.util.list_named_actors():
            pod_name, _, rank = actor_name.rpartition("/")
            if rank.isdigit():
                by_pod.setdefault(pod_name, {})[int(rank)] = ray.get_actor(actor_name)
        for pod_name, ranks in by_pod.items():
            members = [ranks[rank] for rank in sorted(ranks)]
            record = await self._adoptable(members)
            if record is None or len(members) != len(record.pod.info.labels[GROUP_NODES_LABEL].split(",")):
                log.info("engine group %s is incomplete; tearing it down", pod_name)
                self._groups[pod_name] = members
                await self._tear_down(pod_name, grace_s=5.0)
                continue
            pod = record.pod
            self._readiness[pod_name] = record.readiness_url
            # consumers know it from the earlier orchestrator: no second ``added``; ``ready`` once probed
            pod.announced = "draining" if pod.draining else "added"
            if not pod.draining:
                pod.phase = "starting"
            self._pods[pod_name] = pod
            self._groups[pod_name] = members
            self._watch(pod, self._supervise(pod, members, record.readiness_url, "adopted from an earlier "
                                             "orchestrator"))
            log.info("adopted engine group %s", pod_name)
        for group in ray.util.placement_group_table().values():
            name = group.get("name", "")
            if name.startswith(_PG_PREFIX) and name[len(_PG_PREFIX):] not in self._pods \
                    and group.get("state") != "REMOVED":
                # names are per namespace: another orchestrator's group is not found from here
                with contextlib.suppress(ValueError):
                    remove_placement_group(ray.util.get_placement_group(name))

    async def close(self, *, stop_pods: bool) -> None:
        if stop_pods:
            names = list(self._pods)
            await asyncio.gather(*(self.delete_pod(name, "orchestrator stopping") for name in names))
        for name in list(self._watchers):
            await self._stop_watching(name)
        if self._started_cluster:
            ray.shutdown()
            self._started_cluster = False

    # --- one group's life ---------------------------------------------------------------------------

    def _watch(self, pod: Pod, work: Any) -> None:
        self._watchers[pod.name] = asyncio.get_running_loop().create_task(
            self._until_lost(pod, work), name=f"ray-group:{pod.name}"
        )

    async def _until_lost(self, pod: Pod, work: Any) -> None:
        try:
            await work
        except Exception as exc:
            lost = exc if isinstance(exc, GroupLost) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, GroupLost):
                log.exception("watching engine group %s failed; replacing it", pod.name)
            # a half group never serves: the whole group goes, the orchestrator creates a new one
            log.warning("engine group %s lost: %s; replacing the whole group", pod.name, lost)
            self._watchers.pop(pod.name, None)
            await self._tear_down(pod.name, grace_s=pod_grace_s(pod))
            if self._pods.pop(pod.name, None) is not None:
                set_phase(pod, "exited")
                reason = f"engine group lost: {lost}; replacing the whole group"
                announce(self._changes, "removed", pod, reason)

    async def _start_group(self, pod: Pod, spec: DeploymentSpec, group: PlacementGroup) -> None:
        await group.ready()  # gang: every bundle placed, or none (waits for nodes to join)
        members = [
            self._member.options(
                name=f"{pod.name}/{rank}", lifetime="detached", max_restarts=0, num_cpus=self.cpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, rank),
            ).remote(pod.name, rank)
            for rank in range(spec.nodes)
        ]  # fmt: skip
        self._groups[pod.name] = members
        # the first call on each actor waits for its worker process to start
        nodes = await self._call(*(member.node.remote() for member in members), timeout_s=_ACTOR_START_S)
        if spec.engine == "sim" and spec.nodes > 1:  # where the simulated collectives leave a node
            world = spec.tensor_parallel_size * spec.pipeline_parallel_size
            spec = spec.model_copy(update={"engine_args": (*spec.engine_args, "--gpus-per-node",
                                                           str(world // spec.nodes))})  # fmt: skip
        (started,) = await self._call(members[0].start_engine.remote(spec, pod.slot))
        info = pod.info
        info.endpoint, info.metrics_url = started.base_url, started.base_url + "/metrics"
        info.kv_events_endpoint, info.kv_replay_endpoint = started.kv_events, started.kv_replay
        info.kv_events_topic = KV_TOPIC
        info.block_size = started.block_size
        info.labels[NODE_LABEL] = nodes[0][0][:12]
        info.labels[GROUP_NODES_LABEL] = ",".join(node_id[:12] for node_id, _ in nodes)
        pod.pid = started.pid
        self._readiness[pod.name] = started.readiness_url
        await self._remember(pod)
        announce(self._changes, "added", pod, f"engine group placed on {spec.nodes} node(s)")
        await self._supervise(pod, members, started.readiness_url, "readiness probe passed",
                              ready_timeout_s=started.readiness_timeout_s)  # fmt: skip

    async def _supervise(
        self, pod: Pod, members: list[Any], ready_url: str, ready_reason: str, *, ready_timeout_s: float = 0.0
    ) -> None:
        """Until the group is lost: every rank answers and the engine runs; ``ready`` once it is probed."""
        deadline = time.monotonic() + ready_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                codes = await self._call(*(member.engine_exit_code.remote() for member in members))
                if codes[0] is not None:
                    raise GroupLost(f"engine exited with code {codes[0]}")
                if pod.phase == "starting":
                    if await _answers(http, ready_url):
                        set_phase(pod, "ready")
                        await self._remember(pod)
                        announce(self._changes, "ready", pod, ready_reason)
                    elif ready_timeout_s and time.monotonic() > deadline:
                        raise GroupLost(f"engine not ready within {ready_timeout_s:g}s")
                await asyncio.sleep(self._check_interval_s)

    async def _call(self, *refs: Any, timeout_s: float | None = None) -> list[Any]:
        """Results of actor calls, or GroupLost when a rank died or does not answer in time."""
        timeout_s = timeout_s or self._check_timeout_s
        try:
            results = await asyncio.wait_for(asyncio.gather(*refs), timeout_s)
        except asyncio.TimeoutError:
            raise GroupLost(f"a rank did not answer within {timeout_s:g}s") from None
        except ray.exceptions.RayError as exc:
            raise GroupLost(f"a rank died ({type(exc).__name__})") from None
        return results

    async def _remember(self, pod: Pod) -> None:
        members = self._groups.get(pod.name)
        if members and pod.name in self._readiness:
            with contextlib.suppress(ray.exceptions.RayError):
                await members[0].remember.remote(GroupRecord(pod, self._readiness[pod.name]))

    async def _adoptable(self, members: list[Any]) -> GroupRecord | None:
        try:
            record, *_ = await self._call(members[0].record.remote(), *(m.node.remote() for m in members))
            (exit_code,) = await self._call(members[0].engine_exit_code.remote())
        except GroupLost:
            return None
        return record if exit_code is None else None

    async def _tear_down(self, name: str, *, grace_s: float) -> None:
        self._readiness.pop(name, None)
        members = self._groups.pop(name, [])
        if members:
            with contextlib.suppress(ray.exceptions.RayError, asyncio.TimeoutError):
                await asyncio.wait_for(members[0].stop_engine.remote(grace_s), grace_s + 5.0)
        for member in members:
            with contextlib.suppress(ray.exceptions.RayError, ValueError):
                ray.kill(member, no_restart=True)
        with contextlib.suppress(ValueError, ray.exceptions.RayError):
            remove_placement_group(ray.util.get_placement_group(_PG_PREFIX + name))

    async def _stop_watching(self, name: str) -> None:
        task = self._watchers.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- bookkeeping ----------------------------------------------------------------------------------

def pod_grace_s(pod: Pod) -> float:
    return 15.0 if pod.info.engine == "vllm" else 5.0


async def _answers(http: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
