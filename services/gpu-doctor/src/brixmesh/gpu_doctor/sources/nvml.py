"""GPU telemetry from NVML (``nvidia-ml-py``): Xid events (an event set), volatile ECC counts, retired
pages and row remapping, clock-event (throttle) reasons, temperature and power, NVLink error counters, the
PCIe replay counter, and "GPU is lost". A field a GPU does not support is left at its healthy default.

:func:`open_nvml` fails with :class:`NvmlUnavailable` on a machine without the NVIDIA driver; the doctor
then runs without this source and says so once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

from brixmesh.gpu_doctor.readings import GpuReading, new_signals
from brixmesh.gpu_doctor.signals import Signal

T = TypeVar("T")
NVLINK_ERRORS = (
    "NVML_NVLINK_ERROR_DL_CRC_FLIT", "NVML_NVLINK_ERROR_DL_CRC_DATA", "NVML_NVLINK_ERROR_DL_REPLAY"
)


class NvmlUnavailable(RuntimeError):
    pass


def _optional(read: Callable[[], T], default: T) -> T:
    """A reading the GPU or driver may not support (NotSupported, NoPermission...): the default then."""
    try:
        return read()
    except pynvml.NVMLError_GpuIsLost:
        raise
    except pynvml.NVMLError:
        return default


class NvmlSource:
    name = "nvml"

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._events: Any = None
        self._previous: dict[str, GpuReading] = {}

    def open(self) -> int:
        """Initialize NVML; returns the GPU count. Raises :class:`NvmlUnavailable` without a driver."""
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"no NVML ({exc}): no NVIDIA driver on this machine") from None
        count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._events = _optional(pynvml.nvmlEventSetCreate, None)
        for handle in self._handles if self._events is not None else []:
            _optional(lambda h=handle: pynvml.nvmlDeviceRegisterEvents(
                h, pynvml.nvmlEventTypeXidCriticalError, self._events), None)
        return count

    def read_all(self) -> list[GpuReading]:
        xids = self._drain_xids()
        return [self._read(i, handle, tuple(xids.get(i, ()))) for i, handle in enumerate(self._handles)]

    def _drain_xids(self) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        while self._events is not None:
            try:
                data = pynvml.nvmlEventSetWait_v2(self._events, 0)
            except pynvml.NVMLError_Timeout:
                break
            except pynvml.NVMLError:
                break
            found.setdefault(pynvml.nvmlDeviceGetIndex(data.device), []).append(int(data.eventData))
        return found

    def _read(self, index: int, handle: Any, xids: tuple[int, ...]) -> GpuReading:
        gpu = str(index)
        try:
            return GpuReading(
                gpu=gpu,
                xids=xids,
                ecc_uncorrected_volatile=_optional(lambda: pynvml.nvmlDeviceGetTotalEccErrors(
                    handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC), 0),
                ecc_corrected_volatile=_optional(lambda: pynvml.nvmlDeviceGetTotalEccErrors(
                    handle, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC), 0),
                retired_pages_pending=bool(_optional(
                    lambda: pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle), 0)),
                row_remap_pending=bool(_optional(lambda: pynvml.nvmlDeviceGetRemappedRows(handle)[2], 0)),
                row_remap_failure=bool(_optional(lambda: pynvml.nvmlDeviceGetRemappedRows(handle)[3], 0)),
                throttle_reasons=_optional(lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle), 0),
                temperature_c=_optional(
                    lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU), 0),
                power_w=_optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle), 0) / 1000.0,
                nvlink_errors=self._nvlink(handle, NVLINK_ERRORS),
                nvlink_recovery_errors=self._nvlink(handle, ("NVML_NVLINK_ERROR_DL_RECOVERY",)),
                pcie_replays=_optional(lambda: pynvml.nvmlDeviceGetPcieReplayCounter(handle), 0),
            )
        except pynvml.NVMLError_GpuIsLost:
            return GpuReading(gpu=gpu, lost=True, xids=xids)

    @staticmethod
    def _nvlink(handle: Any, counters: tuple[str, ...]) -> float:
        total = 0.0
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            if not _optional(lambda: pynvml.nvmlDeviceGetNvLinkState(handle, link), 0):
                continue
            for counter in counters:
                total += _optional(
                    lambda c=counter: pynvml.nvmlDeviceGetNvLinkErrorCounter(
                        handle, link, getattr(pynvml, c)
                    ),
                    0,
                )
        return total

    async def poll(self, now: float) -> list[Signal]:
        readings = await asyncio.to_thread(self.read_all)
        return new_signals(self._previous, readings, self.name)

    async def close(self) -> None:
        if self._handles:
            if self._events is not None:
                _optional(lambda: pynvml.nvmlEventSetFree(self._events), None)
            _optional(pynvml.nvmlShutdown, None)
            self._handles = []
