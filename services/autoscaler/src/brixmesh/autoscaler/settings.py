from pathlib import Path

from brixmesh.common.settings import KubernetesResourceSettings, ServiceSettings
from pydantic import Field, field_validator


class AutoscalerSettings(ServiceSettings, KubernetesResourceSettings):
    """Settings of the autoscaler service (environment variables ``BRIXMESH_*``)."""

    scrape_interval_s: float = Field(default=0.25, gt=0)
    scrape_timeout_s: float = Field(default=0.2, gt=0)
    evaluate_interval_s: float = Field(default=0.5, gt=0)
    rate_window_s: float = Field(default=2.0, gt=0)
    """Counter deltas (token rates, prefix hit rate) are taken over this window."""
    quantile_window_s: float = Field(default=10.0, gt=0)
    """TTFT/ITL quantiles come from histogram bucket deltas over this window."""
    max_metrics_age_s: float = Field(default=2.0, gt=0)
    """Pod metrics older than this are left out of decisions."""
    decision_refresh_s: float = Field(default=10.0, gt=0)
    """A decision in force is sent again at least this often (the orchestrator shows a deployment as
    autoscaled while it hears from an autoscaler within its ``decision_max_age_s``, 60 s by default)."""
    autoscaler_specs: str = ""
    """Comma-separated YAML files of PodAutoscaler specs loaded at start."""
    gpu_optimizer_specs: str = ""
    """Comma-separated YAML files of ``optimizer`` strategy specs (GPU-type mix of one model)."""
    k8s_podautoscalers: bool = False
    """On Kubernetes: also take the PodAutoscaler resources of ``k8s_namespace`` (listed, then watched)."""

    @field_validator("autoscaler_specs", "gpu_optimizer_specs")
    @classmethod
    def _files_exist(cls, value: str) -> str:
        for path in spec_paths(value):
            if not path.is_file():
                raise ValueError(f"no such file: {path}")
        return value

    @property
    def spec_files(self) -> list[Path]:
        return spec_paths(self.autoscaler_specs)


def spec_paths(value: str) -> list[Path]:
    return [Path(part.strip()) for part in value.split(",") if part.strip()]
