from pathlib import Path

from brixmesh.common.settings import ServiceSettings
from pydantic import Field, field_validator

SOURCES = ("nvml", "dcgm", "engine", "sim")


class GpuDoctorSettings(ServiceSettings):
    """Settings of the gpu-doctor service (environment variables ``BRIXMESH_*``). It reports for the GPUs and
    engines of ``node_name`` (common setting: the host name, the node name on Kubernetes)."""

    doctor_sources: str = "nvml,engine"
    """Comma-separated: ``nvml`` (skipped, said once, where there is no NVIDIA driver), ``dcgm`` (needs
    ``dcgm_url``), ``engine`` (probes, step time, canaries of the node's pods), ``sim`` (a fault script)."""
    dcgm_url: str = ""
    """A DCGM exporter's metrics URL, e.g. ``http://<node>:9400/metrics``."""
    fault_script: Path | None = None
    """YAML fault script of the ``sim`` source (faults can also be added at run time:
    ``POST /admin/faults``)."""
    poll_interval_s: float = Field(default=1.0, gt=0)
    resend_interval_s: float = Field(default=2.0, gt=0)
    cooldown_s: float = Field(default=300.0, ge=0)
    """After an action on a GPU (or pod), actions of the same or a lower rank on it are held back this
    long."""
    hold_scale: float = Field(default=1.0, ge=0)
    """Multiplies every catalogue hold time (tests and benchmarks shorten them)."""
    canary_interval_s: float = Field(default=10.0, gt=0)
    step_baseline_intervals: int = Field(default=5, ge=1)

    @field_validator("doctor_sources")
    @classmethod
    def _known_sources(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(names) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
        return ",".join(names)

    @field_validator("fault_script")
    @classmethod
    def _readable_script(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @property
    def source_names(self) -> list[str]:
        return [name for name in self.doctor_sources.split(",") if name]
