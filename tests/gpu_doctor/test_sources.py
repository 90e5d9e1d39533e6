"""Sources: readings to signals, the DCGM exporter scraped over real HTTP, the fault script, engine-symptom
logic, and NVML's clean absence on a machine without the NVIDIA driver."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from brixmesh.gpu_doctor.readings import GpuReading, reading_signals
from brixmesh.gpu_doctor.sources.dcgm import DcgmSource, parse_dcgm
from brixmesh.gpu_doctor.sources.engine import StepBaseline, canary_reference, itl_totals
from brixmesh.gpu_doctor.sources.nvml import NvmlSource, NvmlUnavailable
from brixmesh.gpu_doctor.sources.simulated import ScriptError, SimulatedSource, load_script, parse_faults

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dcgm"


def kinds(signals: list) -> list[tuple[str, str, float]]:
    return sorted((s.kind, s.gpu, s.value) for s in signals)


def test_counters_signal_their_increase_and_states_while_they_hold() -> None:
    first = GpuReading(gpu="0", ecc_corrected_volatile=500, pcie_replays=10)
    assert reading_signals(None, first, "t") == []  # old counts are the base, not news
    later = GpuReading(gpu="0", ecc_corrected_volatile=650, ecc_uncorrected_volatile=2, pcie_replays=10,
                       throttle_reasons=0x40 | 0x4, xids=(94,))
    assert kinds(reading_signals(first, later, "t")) == [
        ("ecc_corrected", "0", 150), ("ecc_uncorrected", "0", 2), ("throttle_hw", "0", 1),
        ("throttle_power_cap", "0", 1), ("xid", "0", 94),
    ]
    reset = GpuReading(gpu="0", ecc_corrected_volatile=3)  # a GPU reset zeroes volatile counters
    assert kinds(reading_signals(later, reset, "t")) == [("ecc_corrected", "0", 3)]
    assert kinds(reading_signals(later, GpuReading(gpu="0", lost=True), "t")) == [("gpu_lost", "0", 1)]


def test_dcgm_payload_parses_per_gpu() -> None:
    healthy = {r.gpu: r for r in parse_dcgm((FIXTURES / "dcgm-exporter-healthy.txt").read_text())}
    faulty = {r.gpu: r for r in parse_dcgm((FIXTURES / "dcgm-exporter-faulty.txt").read_text())}
    assert set(healthy) == set(faulty) == {"0", "1"}
    assert healthy["0"] == faulty["0"]
    one = faulty["1"]
    assert (one.last_xid, one.ecc_uncorrected_volatile, one.row_remap_failure) == (48, 3, True)
    assert (one.throttle_reasons, one.nvlink_errors, one.nvlink_recovery_errors, one.pcie_replays) == (
        0x48, 25, 1, 340
    )
    assert (one.temperature_c, one.power_w) == (91, 699.1)


@contextlib.contextmanager
def serving(payloads: list[bytes]) -> Iterator[str]:
    """A real HTTP server answering ``/metrics`` with the next payload each time (the last one repeats)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = payloads.pop(0) if len(payloads) > 1 else payloads[0]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


async def test_dcgm_source_scrapes_an_exporter_over_http() -> None:
    payloads = [(FIXTURES / f"dcgm-exporter-{name}.txt").read_bytes() for name in ("healthy", "faulty")]
    with serving(payloads) as url:
        source = DcgmSource(url)
        try:
            assert await source.poll(0.0) == []  # healthy: nothing, counters now have a base
            signals = await source.poll(1.0)
        finally:
            await source.close()
    assert {s.gpu for s in signals} == {"1"} and {s.source for s in signals} == {"dcgm"}
    assert kinds(signals) == [
        ("ecc_uncorrected", "1", 3), ("nvlink_errors", "1", 25), ("nvlink_recovery", "1", 1),
        ("pcie_replays", "1", 337), ("row_remap_failure", "1", 1), ("throttle_hw", "1", 1), ("xid", "1", 48),
    ]
    assert signals[0].detail["temperature_c"] == "91"


async def test_dcgm_source_survives_an_unreachable_exporter() -> None:
    with serving([b"not the prometheus format {"]) as url:
        source = DcgmSource(url)
        assert await source.poll(0.0) == [] and source.last_error
        await source.close()


def test_nvml_reports_its_absence_cleanly() -> None:
    with pytest.raises(NvmlUnavailable, match="no NVML"):
        NvmlSource().open()


async def test_fault_script_schedules_events_states_and_repeats(tmp_path: Path) -> None:
    script = tmp_path / "faults.yaml"
    script.write_text(
        "faults:\n"
        "  - {at_s: 1, gpu: 1, signal: xid, value: 79}\n"
        "  - {at_s: 2, gpu: '0', signal: throttle_hw, for_s: 2}\n"
        "  - {at_s: 0, gpu: '2', signal: xid, value: 94, every_s: 3, times: 2}\n"
    )
    source = SimulatedSource(load_script(script), started_at=100.0)
    seen = {t: kinds(await source.poll(100.0 + t)) for t in (0.0, 0.5, 1.0, 2.5, 3.5, 4.5)}
    assert seen == {
        0.0: [("xid", "2", 94)],
        0.5: [],
        1.0: [("xid", "1", 79)],
        2.5: [("throttle_hw", "0", 1)],
        3.5: [("throttle_hw", "0", 1), ("xid", "2", 94)],
        4.5: [],
    }


def test_bad_fault_scripts_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="unknown signal 'xidd'"):
        parse_faults([{"gpu": "0", "signal": "xidd"}], "s")
    with pytest.raises(ScriptError, match="needs every_s > for_s"):
        parse_faults([{"gpu": "0", "signal": "gpu_lost", "times": 3, "for_s": 5, "every_s": 2}], "s")
    with pytest.raises(ScriptError, match="fault 0"):
        parse_faults([{"gpu": "0", "signal": "xid", "when": 3}], "s")
    with pytest.raises(ScriptError, match="expected a list"):
        parse_faults({"fault": []}, "s")
    with pytest.raises(ScriptError, match="missing.yaml"):
        load_script(tmp_path / "missing.yaml")


def test_step_time_baseline_is_the_pods_own() -> None:
    steps = StepBaseline(baseline_intervals=2, min_tokens=10)
    assert steps.observe(0.0, 0) is None  # first scrape
    assert steps.observe(0.5, 10) is None  # 50 ms: baseline sample
    assert steps.observe(0.55, 11) is None  # one token: waits for more
    assert steps.observe(1.0, 20) is None  # 50 ms: second sample
    assert steps.observe(3.0, 40) == pytest.approx((0.1, 0.05))  # 100 ms against 50 ms
    assert steps.observe(0.1, 5) is None  # counters went back: the engine restarted


def test_itl_totals_read_the_vllm_histogram() -> None:
    text = (
        "# TYPE vllm:inter_token_latency_seconds histogram\n"
        'vllm:inter_token_latency_seconds_bucket{model_name="m",le="+Inf"} 40\n'
        'vllm:inter_token_latency_seconds_count{model_name="m"} 40\n'
        'vllm:inter_token_latency_seconds_sum{model_name="m"} 2.0\n'
    )
    assert itl_totals(text) == (2.0, 40)


def test_canary_reference_is_the_majority_answer() -> None:
    first = {"a": "x", "b": "x", "c": "y"}
    assert canary_reference({"a": "x", "b": "x", "c": "z"}, first, "c") == "x"
    assert canary_reference({"a": "z"}, {"a": "x"}, "a") == "x"  # alone: its own first answer
