"""The local backend: every pod is a supervised process group on this machine.

Restarts, backoff, crash-loop detection and readiness probing come from ``brixmesh.common.supervisor``; this
module turns its state changes into pod lifecycle events. Logs: ``<state_dir>/logs/<pod>.log`` (appended
across restarts, kept after the pod is gone).

Pods outlive the orchestrator: each one is recorded in the state directory when it is created, and a new
orchestrator with the same state directory adopts the recorded pods whose process still runs (same name,
pid, ports, generation and slot), probes them and supervises them from then on. Only a scale-down, a
deletion or :meth:`LocalBackend.close` with ``stop_pods`` stops an engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from brixmesh.common.lora import lora_limits
from brixmesh.common.messages import GPU_INDEX_LABEL, NODE_LABEL, PodEvent, PodInfo
from brixmesh.common.ports import free_port
from brixmesh.common.supervisor import ProcessSpec, ProcessState, ReadinessProbe, SupervisedProcess
from brixmesh.common.vllm_cpu import NIXL_SIDE_CHANNEL_PORT_ENV

from brixmesh.orchestrator.backend import (
    ROLE_NAME_LABEL, ROLE_SET_LABEL, Pod, PodTable, Unschedulable, announce, free_host_slot, free_slot, new_pod_name,
    set_phase,
)
from brixmesh.orchestrator.check import check_runnable
from brixmesh.orchestrator.cordons import Cordons
from brixmesh.orchestrator.external import EndpointMonitor
from brixmesh.orchestrator.launch import (
    DEFAULTS,
    KV_TOPIC,
    POD_ENV,
    STATE_DIR_ENV,
    PodPlacement,
    build_launch,
    uses_nixl_side_channel,
)
from brixmesh.orchestrator.spec import DeploymentSpec, RoleMember, SpecError, kv_transfer_of, role_set_name
from brixmesh.orchestrator.state import LaunchRecord, PodRecord, pod_records

log = logging.getLogger(__name__)

_MAX_POD_NAME = 63  # 40-character deployment name, role set (2 digits), role (12), 5 hex digits, 4 '-' 
_IPC_PATH_LIMIT = 100  # sun_path holds 107 bytes; keep a margin


class LocalBackend(PodTable):
    kind = "local"
    spans_nodes = False

    def __init__(
        self,
        state_dir: Path,
        *,
        node_name: str = "local",
        gpus: int = 8,
        port_picker: Callable[[], int] = free_port,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.node_name = node_name
        self.gpus = gpus
        """How many GPUs this node has to place pods on (simulated engines only pretend to use theirs)."""
        self.cordons = Cordons(self.state_dir / "cordons.json")
        self.log_dir = self.state_dir / "logs"
        self.runtime_root = runtime_root(self.state_dir)
        self._free_port = port_picker
        self._pods: dict[str, Pod] = {}
        self._processes: dict[str, SupervisedProcess] = {}
        self._monitors: dict[str, EndpointMonitor] = {}
        self._changes: asyncio.Queue[PodEvent] = asyncio.Queue()
        self._records = pod_records(self.state_dir)

    # --- PodBackend ----------------------------------------------------------------------------------

    def validate(self, spec: DeploymentSpec) -> None:
        if spec.nodes > 1:
            raise SpecError(
                f"nodes: an engine group of {spec.nodes} nodes needs a multi-node backend "
                "(BRIXMESH_BACKEND=ray); the local backend runs every pod on this machine", "nodes"
            )
        check_runnable(spec)

    async def create_pod(
        self, spec: DeploymentSpec, generation: int, member: RoleMember | None = None
    ) -> Pod:
        if spec.is_external:
            return self._register_external(spec, generation)
        gpu = self._place()
        role_name = ""
        if member is not None:
            spec, role_name = spec.for_role(member.role), member.role
        prefix = spec.name if member is None else f"{spec.name}-{member.role_set}-{role_name}"
        name = new_pod_name(prefix, self._pods)
        slot = free_slot(self._pods.values(), spec.name, role_name)
        host_slot = free_host_slot(self._pods.values())
        runtime_dir = self.runtime_root / name
        runtime_dir.mkdir(parents=True, exist_ok=True)
        http_port = self._unused_port()
        replay_port = self._unused_port(http_port)
        placement = PodPlacement(
            pod=name,
            slot=slot,
            host_slot=host_slot,
            http_port=http_port,
            replay_port=replay_port,
            runtime_dir=runtime_dir,
            state_dir=self.state_dir,
            nixl_side_channel_port=(
                self._unused_port(http_port, replay_port) if uses_nixl_side_channel(spec) else 0
            ),
        )
        launch = build_launch(spec, placement)
        info = pod_info(
            spec, name, self.kind, placement.base_url,
            kv_events=placement.kv_events_endpoint, kv_replay=placement.kv_replay_endpoint,
            block_size=launch.block_size, engine_argv=launch.argv,
        )  # fmt: skip
        info.labels.update({NODE_LABEL: self.node_name, GPU_INDEX_LABEL: gpu})
        if member is not None:
            place_in_role_set(info, member, spec.engine_args)
        pod = Pod(info=info, generation=generation, slot=slot, host_slot=host_slot)
        command = LaunchRecord(
            argv=launch.argv,
            env=launch.env,
            readiness_url=launch.readiness_url,
            readiness_timeout_s=launch.readiness_timeout_s,
            stop_grace_s=launch.stop_grace_s,
            restart=spec.restart_policy,
        )
        self._save(pod, command)
        process = self._supervise(pod, command)
        announce(self._changes, "added", pod, "created")
        process.start()
        return pod

    def _supervise(self, pod: Pod, command: LaunchRecord) -> SupervisedProcess:
        process = SupervisedProcess(
            ProcessSpec(
                name=pod.name,
                argv=command.argv,
                env=command.env,
                log_path=self.log_dir / f"{pod.name}.log",
                readiness=ReadinessProbe(url=command.readiness_url, timeout_s=command.readiness_timeout_s),
                restart=command.restart,
                stop_grace_s=command.stop_grace_s,
            ),
            on_state=self._on_process_state,
        )
        self._pods[pod.name] = pod
        self._processes[pod.name] = process
        return process

    def _save(self, pod: Pod, command: LaunchRecord | None, probe_url: str = "") -> None:
        record = PodRecord(
            info=pod.info, generation=pod.generation, slot=pod.slot, host_slot=pod.host_slot,
            created_at=pod.created_at, draining=pod.draining, launch=command, probe_url=probe_url,
        )  # fmt: skip
        self._records.save(pod.name, record)

    def _register_external(self, spec: DeploymentSpec, generation: int) -> Pod:
        """A pod for the first endpoint no pod of this generation holds (during a rollout an endpoint is held
        by its old and its new pod until the old one is drained)."""
        held = {p.slot for p in self._pods.values() if p.deployment == spec.name and p.generation == generation}
        slot = next(i for i in range(len(spec.external)) if i not in held)
        endpoint = spec.external[slot]
        name = new_pod_name(spec.name, self._pods)
        info = pod_info(
            spec, name, "external", endpoint.url,
            kv_events=endpoint.kv_events, kv_replay=endpoint.kv_replay, block_size=spec.block_size,
            engine_argv=spec.engine_args,
        )  # fmt: skip
        pod = Pod(info=info, generation=generation, slot=slot, external=True)
        probe_url = endpoint.url + (spec.readiness.path or DEFAULTS[spec.engine].readiness_path)
        self._save(pod, None, probe_url)
        self._monitor(pod, probe_url)
        announce(self._changes, "added", pod, "external endpoint registered")
        return pod

    def _monitor(self, pod: Pod, probe_url: str) -> None:
        monitor = EndpointMonitor(probe_url, lambda serving: self._on_external_change(pod, serving))
        self._pods[pod.name] = pod
        self._monitors[pod.name] = monitor
        monitor.start()

    def _on_external_change(self, pod: Pod, serving: bool) -> None:
        if pod.name not in self._pods:
            return
        if serving:
            if pod.draining:
                return
            announce(self._changes, "added", pod, "external endpoint answers again")
            set_phase(pod, "ready")
            announce(self._changes, "ready", pod, "readiness probe passed")
        else:
            if not pod.draining:
                set_phase(pod, "starting")
            announce(self._changes, "removed", pod, "readiness probe failing")

    async def drain_pod(self, name: str, reason: str) -> None:
        pod = self._pods.get(name)
        if pod is None or pod.draining:
            return
        set_phase(pod, "draining")
        announce(self._changes, "draining", pod, reason)
        record = self._records.load(name)
        if record is not None:
            record.draining = True
            self._records.save(name, record)

    async def delete_pod(self, name: str, reason: str) -> None:
        # forgotten only once stopped: a deletion cut short (the orchestrator stopping) leaves them for close()
        process = self._processes.get(name)
        if process is not None:
            await process.stop()
            self._processes.pop(name, None)
        monitor = self._monitors.get(name)
        if monitor is not None:
            await monitor.stop()
            self._monitors.pop(name, None)
        pod = self._pods.pop(name, None)
        if pod is None:
            return
        self._records.drop(name)
        announce(self._changes, "removed", pod, reason)
        shutil.rmtree(self.runtime_root / name, ignore_errors=True)


    async def close(self, *, stop_pods: bool) -> None:
        """Stop every pod (each reported as ``removed``), or with ``stop_pods`` false leave them running,
        recorded and announced as they are, for the next orchestrator to adopt."""
        if stop_pods:
            names = list(self._pods)
            await asyncio.gather(*(self.delete_pod(name, "orchestrator stopping") for name in names))
            return
        await asyncio.gather(*(process.release() for process in self._processes.values()))
        await asyncio.gather(*(monitor.stop() for monitor in self._monitors.values()))
        self._processes.clear()
        self._monitors.clear()

    async def recover(self) -> None:
        """Before the first reconcile: adopt the recorded pods whose process still runs, take back the
        recorded external pods, forget recorded pods that died meanwhile, and stop the pod processes of this
        state directory that are not recorded."""
        running = await asyncio.to_thread(find_pod_leaders, self.state_dir)
        adopted = []
        for name, record in self._records.load_all().items():
            pod = Pod(
                info=record.info, generation=record.generation, slot=record.slot, host_slot=record.host_slot,
                created_at=record.created_at,
            )
            # consumers know it from the earlier orchestrator: no second ``added``; ``ready`` once probed
            pod.announced = "added"
            if record.draining:
                pod.phase = pod.announced = "draining"
            if record.launch is None:
                pod.external = True
                self._monitor(pod, record.probe_url)
                continue
            pid = running.pop(name, None)
            if pid is None:
                log.info("pod %s ended while no orchestrator watched it; it will be replaced", name)
                self._records.drop(name)
                shutil.rmtree(self.runtime_root / name, ignore_errors=True)
                continue
            pod.pid = pid
            self._supervise(pod, record.launch).adopt(pid)
            adopted.append(name)
        if adopted:
            log.info("adopted %d running pod(s): %s", len(adopted), ", ".join(adopted))
        await asyncio.to_thread(stop_groups, sorted(running.values()))

    # --- process states -> pod phases and events -------------------------------------------------------

    def _on_process_state(self, process: SupervisedProcess, state: ProcessState) -> None:
        pod = self._pods.get(process.spec.name)
        if pod is None:
            return
        pod.pid = process.pid or 0
        pod.restarts = process.restarts
        pod.last_exit_code = process.last_exit_code
        if state is ProcessState.STOPPED or pod.draining:
            if state in (ProcessState.BACKOFF, ProcessState.CRASHLOOP, ProcessState.EXITED):
                announce(self._changes, "removed", pod, f"{_exited(process)} while draining")
            return
        if state is ProcessState.STARTING:
            set_phase(pod, "starting")
            announce(self._changes, "added", pod, f"restart {process.restarts}")
        elif state is ProcessState.READY:
            set_phase(pod, "ready")
            if process.adopted:
                reason = "adopted from an earlier orchestrator"
            elif pod.restarts:
                reason = f"ready after restart {pod.restarts}"
            else:
                reason = "readiness probe passed"
            announce(self._changes, "ready", pod, reason)
        elif state in (ProcessState.BACKOFF, ProcessState.CRASHLOOP):
            set_phase(pod, "crashloop" if state is ProcessState.CRASHLOOP else "restarting")
            announce(self._changes, "removed", pod, f"{_exited(process)}; restarting"
                     + (" (crash loop)" if state is ProcessState.CRASHLOOP else ""))
        elif state is ProcessState.EXITED:
            set_phase(pod, "exited")
            reason = f"{_exited(process)}; restart policy {process.spec.restart}"
            announce(self._changes, "removed", pod, reason)

    # --- naming ------------------------------------------------------------------------------------------

    def _unused_port(self, *also_taken: int) -> int:
        """A free port no pod of ours holds: pods keep their ports across restarts, and one just created may
        not have bound its port yet, so the OS alone could hand it out twice."""
        taken = set(also_taken)
        for pod in self._pods.values():
            if pod.external:
                continue
            taken.add(int(pod.info.endpoint.rsplit(":", 1)[1]))
            taken.add(int(pod.info.kv_replay_endpoint.rsplit(":", 1)[1]))
        for process in self._processes.values():
            side_channel = process.spec.env.get(NIXL_SIDE_CHANNEL_PORT_ENV)
            if side_channel:
                taken.add(int(side_channel))
        while True:
            port = self._free_port()
            if port not in taken:
                return port

    def _place(self) -> str:
        """The GPU of this node for a new pod: not cordoned, fewest pods (not draining) first."""
        node_cordon = self.cordons.node_cordon(self.node_name)
        if node_cordon is not None:
            raise Unschedulable(f"node {self.node_name} is cordoned: {node_cordon.reason}")
        gpus = [str(gpu) for gpu in range(self.gpus)]
        free = [gpu for gpu in gpus if self.cordons.blocking(self.node_name, gpu) is None]
        if not free:
            raise Unschedulable(f"every GPU of node {self.node_name} is cordoned")
        load = {gpu: 0 for gpu in free}
        for pod in self._pods.values():
            gpu = pod.info.labels.get(GPU_INDEX_LABEL, "")
            if gpu in load and not pod.draining:
                load[gpu] += 1
        return min(free, key=lambda gpu: (load[gpu], int(gpu)))

def pod_info(
    spec: DeploymentSpec,
    name: str,
    backend: str,
    url: str,
    *,
    kv_events: str,
    kv_replay: str,
    block_size: int,
    engine_argv: Sequence[str] = (),
) -> PodInfo:
    """What consumers learn of one pod of ``spec`` served at ``url`` (``kv_events`` empty: no KV events;
    LoRA limits from the engine's command line)."""
    limits = lora_limits(engine_argv)
    return PodInfo(
        pod=name,
        deployment=spec.name,
        model=spec.model,
        engine=spec.engine,
        role=spec.role,
        endpoint=url,
        metrics_url=url + "/metrics",
        kv_events_endpoint=kv_events,
        kv_replay_endpoint=kv_replay,
        kv_events_topic=KV_TOPIC if kv_events else "",
        block_size=block_size,
        labels=pod_labels(spec, backend),
        max_loras=limits.max_loras,
        max_cpu_loras=limits.max_cpu_loras,
        max_lora_rank=limits.max_lora_rank,
    )


def place_in_role_set(info: PodInfo, member: RoleMember, engine_args: Sequence[str]) -> None:
    """Mark ``info`` (a pod launched with the role's ``engine_args``) as a member of its role set."""
    info.role_set = role_set_name(info.deployment, member.role_set)
    info.replica_index = member.replica_index
    info.kv_transfer, info.bootstrap_port = kv_transfer_of(info.engine, engine_args)
    info.labels.update({ROLE_SET_LABEL: info.role_set, ROLE_NAME_LABEL: member.role})


def pod_labels(spec: DeploymentSpec, backend: str) -> dict[str, str]:
    return {
        **spec.labels,
        "model": spec.model,
        "engine": spec.engine,
        "role": spec.role,
        "deployment": spec.name,
        "backend": backend,
    }


def runtime_root(state_dir: Path) -> Path:
    """``<state_dir>/run``, or a short directory under /tmp when ipc:// socket paths would get too long there."""
    preferred = state_dir / "run"
    if len(str(preferred)) + len(f"/{'x' * _MAX_POD_NAME}/kv-events.ipc") <= _IPC_PATH_LIMIT:
        return preferred
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"brixmesh-{os.getuid()}-{digest}"


def find_pod_leaders(state_dir: Path) -> dict[str, int]:
    """Running process-group leaders whose environment names ``state_dir`` as their pod state dir, by the
    pod name in their environment. Blocking (reads /proc)."""
    marker = f"{STATE_DIR_ENV}={state_dir}".encode()
    pod_prefix = f"{POD_ENV}=".encode()
    leaders: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            is_leader = os.getpgid(int(proc.name)) == int(proc.name)
        except (OSError, ProcessLookupError):
            continue
        pod = next((item[len(pod_prefix):] for item in environ if item.startswith(pod_prefix)), None)
        if is_leader and marker in environ and pod is not None:
            leaders[pod.decode(errors="replace")] = int(proc.name)
    return leaders


def stop_groups(leaders: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each process group, SIGKILL those left after ``grace_s``. Blocking."""
    for pid in leaders:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in leaders):
        time.sleep(0.05)
    for pid in leaders:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    if leaders:
        log.warning("stopped %d unrecorded pod process group(s) of this state directory", len(leaders))


def _exited(process: SupervisedProcess) -> str:
    code = process.last_exit_code
    return "exited (adopted: exit code unknown)" if code is None else f"exited with code {code}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, parent gone or not reaping) is as good as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
