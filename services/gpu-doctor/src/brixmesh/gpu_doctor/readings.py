"""One GPU's health readings, as NVML or a DCGM exporter report them, and the signals two successive
readings amount to. Pure: the sources only fill :class:`GpuReading`."""

from __future__ import annotations

from dataclasses import dataclass

from brixmesh.gpu_doctor.signals import Signal

# nvmlClocksEventReasons (formerly ...ThrottleReasons) bits, as in nvml.h and
# DCGM_FI_DEV_CLOCK_THROTTLE_REASONS
THROTTLE_SW_POWER_CAP = 0x4
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40
THROTTLE_HW_POWER_BRAKE = 0x80
THROTTLE_SIGNALS = (
    (THROTTLE_HW_SLOWDOWN | THROTTLE_HW_THERMAL | THROTTLE_HW_POWER_BRAKE, "throttle_hw"),
    (THROTTLE_SW_THERMAL, "throttle_thermal"),
    (THROTTLE_SW_POWER_CAP, "throttle_power_cap"),
)


@dataclass(frozen=True)
class GpuReading:
    gpu: str
    lost: bool = False
    """The GPU does not answer (NVML ``GPU_IS_LOST``; DCGM stops exporting it is not the same: no reading)."""
    xids: tuple[int, ...] = ()
    """Xid events since the last reading (NVML event set)."""
    last_xid: int = 0
    """The last Xid the GPU raised (DCGM's ``DCGM_FI_DEV_XID_ERRORS`` gauge): a change is a new event."""
    ecc_uncorrected_volatile: float = 0.0
    ecc_corrected_volatile: float = 0.0
    retired_pages_pending: bool = False
    row_remap_failure: bool = False
    row_remap_pending: bool = False
    throttle_reasons: int = 0
    temperature_c: float = 0.0
    power_w: float = 0.0
    nvlink_errors: float = 0.0
    """CRC (flit and data) and replay errors over every link, cumulative."""
    nvlink_recovery_errors: float = 0.0
    pcie_replays: float = 0.0


def _increase(previous: float | None, current: float) -> float:
    """A counter's increase; a counter that went down was reset (driver reload, GPU reset): count from 0."""
    if previous is None:
        return 0.0
    return current - previous if current >= previous else current


def new_signals(previous: dict[str, GpuReading], readings: list[GpuReading], source: str) -> list[Signal]:
    """Signals of each GPU's reading against the one before it in ``previous``, which then holds these."""
    signals = []
    for reading in readings:
        signals += reading_signals(previous.get(reading.gpu), reading, source)
        previous[reading.gpu] = reading
    return signals


def reading_signals(previous: GpuReading | None, current: GpuReading, source: str) -> list[Signal]:
    """Signals of one GPU from its reading now and the one before (None at the first poll: counters then
    only set the base, so a long-lived count of corrected errors is not news)."""
    gpu = current.gpu
    base = {"temperature_c": f"{current.temperature_c:g}", "power_w": f"{current.power_w:g}"}

    def signal(kind: str, value: float = 1.0, **detail: str) -> Signal:
        return Signal(kind, gpu=gpu, value=value, source=source, detail={**base, **detail})

    if current.lost:
        return [signal("gpu_lost")]
    found = [signal("xid", float(code)) for code in current.xids]
    if current.last_xid and (previous is None or previous.last_xid != current.last_xid):
        found.append(signal("xid", float(current.last_xid)))
    counters = (
        ("ecc_uncorrected", "ecc_uncorrected_volatile"),
        ("ecc_corrected", "ecc_corrected_volatile"),
        ("nvlink_errors", "nvlink_errors"),
        ("nvlink_recovery", "nvlink_recovery_errors"),
        ("pcie_replays", "pcie_replays"),
    )
    for kind, attribute in counters:
        now = getattr(current, attribute)
        increase = _increase(getattr(previous, attribute) if previous is not None else None, now)
        if increase > 0:
            found.append(signal(kind, increase, total=f"{now:g}"))
    if current.row_remap_failure:
        found.append(signal("row_remap_failure"))
    if current.retired_pages_pending or current.row_remap_pending:
        found.append(signal("memory_repair_pending"))
    for mask, kind in THROTTLE_SIGNALS:
        if current.throttle_reasons & mask:
            found.append(signal(kind, reasons=hex(current.throttle_reasons)))
    return found
