from pathlib import Path
from typing import Literal

from brixmesh.common.settings import ServiceSettings
from pydantic import Field


class OrchestratorSettings(ServiceSettings):
    """Settings of the orchestrator service (environment variables ``BRIXMESH_*``)."""

    backend: Literal["local", "kubernetes", "ray"] = "local"
    """Where pods run: processes on this machine, Kubernetes pods of ModelDeployment resources (then
    ``BRIXMESH_K8S_*`` configure it; docs/kubernetes.md), or engine groups on a Ray cluster (then ``ray_*``
    apply; docs/ray.md)."""
    ray_address: str = ""
    """The Ray cluster to join (``host:port`` of its GCS); empty: start a local single-node cluster that
    ends with the orchestrator."""
    ray_namespace: str = "brixmesh"
    """Ray namespace of this orchestrator's actors and placement groups (one orchestrator per namespace)."""
    ray_cpus_per_rank: float = Field(default=1.0, gt=0)
    """CPUs each rank (bundle) of an engine group asks Ray for."""
    state_dir: Path = Path(".brixmesh")
    """Pod logs go to ``<state_dir>/logs/<pod>.log``, KV-event sockets to ``<state_dir>/run/``; deployments
    (``deployments/``) and pod records (``pods/``) are kept there across restarts."""
    deployments_file: Path | None = None
    """A YAML file of deployment specs applied at start."""
    deployments_dir: Path | None = None
    """A directory whose ``*.yaml``/``*.yml`` files are applied at start (after ``deployments_file``)."""
    default_engines: int = Field(default=0, ge=0)
    """``brixmesh up --engines N``: N > 0 creates a deployment named ``default`` at start."""
    default_engine: Literal["sim", "vllm", "sglang"] = "sim"
    default_model: str = "tiny-llama"
    announce_interval_s: float = Field(default=5.0, gt=0)
    """Every pod consumers know is re-announced this often; they hold each one for ``lease_intervals`` (3)
    announce intervals, so a pod the orchestrator stopped announcing (it died, a removal was lost) is
    dropped."""
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    drain_poll_interval_s: float = Field(default=0.25, gt=0)
    decision_max_age_s: float = Field(default=60.0, gt=0)
    """Scale decisions older than this (by their ``ts``) are ignored as stale; a deployment that received
    none for this long is no longer shown as autoscaled."""
    local_gpus: int = Field(default=8, ge=1)
    """GPUs of this node the local backend places pods on (each pod is labelled with its node and GPU, the
    gpu-doctor's unit of action; a cordoned GPU gets no new pod)."""
    stop_pods_on_exit: bool = False
    """Stop every engine when the orchestrator stops gracefully. Off: engines keep serving and the next
    orchestrator with the same state directory adopts them (``brixmesh up`` turns it on for its own)."""
