"""GPU telemetry scraped from a DCGM exporter's ``/metrics`` (nodes that run NVIDIA's dcgm-exporter).

Field names are dcgm-exporter's (``etc/default-counters.csv`` and the DCP/extra sets): one sample per GPU,
labelled ``gpu`` (index), ``UUID``, ``device``, ``modelName``, ``Hostname`` (and ``pod``/``namespace`` with
Kubernetes mapping). Only what the default counter set exports can be read: Xid errors arrive as
``DCGM_FI_DEV_XID_ERRORS``, the last Xid value, so the same Xid twice in a row is one event here.
"""

from __future__ import annotations

from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from brixmesh.gpu_doctor.readings import GpuReading, new_signals
from brixmesh.gpu_doctor.signals import Signal

FIELDS: dict[str, str] = {
    "DCGM_FI_DEV_XID_ERRORS": "last_xid",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": "ecc_uncorrected_volatile",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": "ecc_corrected_volatile",
    "DCGM_FI_DEV_RETIRED_PENDING": "retired_pages_pending",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": "row_remap_failure",
    "DCGM_FI_DEV_ROW_REMAP_PENDING": "row_remap_pending",
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": "throttle_reasons",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": "throttle_reasons",
    "DCGM_FI_DEV_GPU_TEMP": "temperature_c",
    "DCGM_FI_DEV_POWER_USAGE": "power_w",
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL": "nvlink_errors",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL": "nvlink_errors",
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL": "nvlink_errors",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL": "nvlink_recovery_errors",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "pcie_replays",
}
"""dcgm-exporter field -> :class:`GpuReading` attribute (several NVLink counters add up)."""
_FLAGS = {"retired_pages_pending", "row_remap_failure", "row_remap_pending"}
_INTEGERS = {"last_xid", "throttle_reasons"}


def parse_dcgm(text: str) -> list[GpuReading]:
    """Readings of every GPU in a dcgm-exporter payload (GPUs keyed by their ``gpu`` label)."""
    values: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        attribute = FIELDS.get(family.name)  # the parser names a counter's samples <name>_total
        if attribute is None:
            continue
        for sample in family.samples:
            gpu = sample.labels.get("gpu")
            if gpu is None:
                continue
            values[gpu][attribute] += sample.value
    readings = []
    by_index = sorted(values.items(), key=lambda item: (len(item[0]), item[0]))
    for gpu, fields in by_index:
        typed = {
            name: bool(value) if name in _FLAGS else int(value) if name in _INTEGERS else value
            for name, value in fields.items()
        }
        readings.append(GpuReading(gpu=gpu, **typed))
    return readings


class DcgmSource:
    name = "dcgm"

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        self.url = url
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self._previous: dict[str, GpuReading] = {}
        self.last_error = ""
        """Why the last scrape failed ("" when it worked): shown on /v1/health, never a fault of a GPU."""

    async def poll(self, now: float) -> list[Signal]:
        try:
            response = await self._http.get(self.url)
            response.raise_for_status()
            readings = parse_dcgm(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return []
        self.last_error = ""
        return new_signals(self._previous, readings, self.name)

    async def close(self) -> None:
        await self._http.aclose()
