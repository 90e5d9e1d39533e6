from pathlib import Path

from brixmesh.common.settings import KubernetesResourceSettings, ServiceSettings
from pydantic import Field


class AdapterManagerSettings(ServiceSettings, KubernetesResourceSettings):
    """Settings of the adapter-manager service (environment variables ``BRIXMESH_*``)."""

    state_dir: Path = Path(".brixmesh")
    """Registered adapters are kept in ``<state_dir>/adapters/``, downloaded artifacts in
    ``<state_dir>/adapter-cache/`` (engines on this node load them from there)."""
    k8s_modeladapters: bool = False
    """On Kubernetes: also take the ModelAdapter resources of ``k8s_namespace`` (listed, then watched)."""
    adapters_file: Path | None = None
    """A YAML file, or a directory of ``*.yaml``/``*.yml`` files, of adapter specs registered at start."""
    credentials_dir: Path | None = None
    """Where an adapter's ``credentials: NAME`` is read from: ``<credentials_dir>/NAME.yaml``."""
    s3_endpoint_url: str = ""
    """The S3 API's URL for ``s3://`` artifacts (empty: AWS); a credentials file may override it."""
    hf_cache_dir: Path = Path.home() / ".cache" / "huggingface" / "hub"
    """The Hugging Face hub cache that ``hf://org/name[@revision]`` artifacts are read from (offline)."""
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    announce_interval_s: float = Field(default=2.0, gt=0)
    """The whole placement table is published at least this often (and on every change)."""
    engine_timeout_s: float = Field(default=30.0, gt=0)
    """One engine call (list, load, unload)."""
    load_attempts: int = Field(default=3, ge=1)
    """Failed loads of one adapter on one pod before it is placed on another pod instead."""
    load_backoff_s: float = Field(default=0.5, gt=0)
    """Wait before the second load attempt; doubles with every further one."""
    refused_pod_s: float = Field(default=300.0, gt=0)
    """A pod that refused an adapter ``load_attempts`` times is not given it again for this long."""
    default_max_loras: int = Field(default=1, ge=1)
    """A pod's adapter capacity when its announcement does not say (vLLM's ``--max-loras`` default)."""
    replica_requests_per_s: float = Field(default=20.0, gt=0)
    """Density: one adapter replica per this many requests per second (adapters with ``min_replicas``)."""
    demand_window_s: float = Field(default=30.0, gt=0)
    """Demand is the request rate over this window; an adapter without requests for this long is cold."""
