"""The whole compare pipeline, tiny: two simulated engines, six requests, two brixmesh strategies and the
in-client oracle. Checks the report files, not speeds."""

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.waiting import eventually

BRIXMESH = Path(sys.executable).parent / "brixmesh"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_compare_tiny_writes_report_with_table_and_plots(tmp_path):
    out = tmp_path / "report"
    run = subprocess.run(
        [str(BRIXMESH), "bench", "compare", "--tiny", "-c", "brixmesh:random", "-c", "brixmesh:prefix-cache",
         "-c", "oracle", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=220, check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]
    report = (out / "report.md").read_text()
    assert "| contender | out tok/s | vs random |" in report
    for name in ("brixmesh:random", "brixmesh:prefix-cache", "oracle"):
        assert f"| {name} |" in report
    assert "| brixmesh:random | " in report and "1.00x" in report
    results = json.loads((out / "results.json").read_text())
    runs = results["workloads"][0]["runs"]
    assert [r["status"] for r in runs] == ["ok", "ok", "ok"]
    for r in runs:
        assert r["summary"]["succeeded"] == r["summary"]["requests"] == 6
        assert 0.0 < r["engines"]["hit_rate"] < 1.0
    assert runs[0]["router_cpu_s"] is not None and runs[2]["router_cpu_s"] is None
    for png in ("shared-prefix-ttft-cdf.png", "shared-prefix-throughput.png", "shared-prefix-queues.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_unknown_contenders_in_one_line(tmp_path):
    run = subprocess.run([str(BRIXMESH), "bench", "compare", "--tiny", "-c", "nginx", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        ("brixmesh bench: unknown contender 'nginx'; use brixmesh:<strategy>, smg:<policy>, "
         "vllm-router:<policy>, oracle or client-random")]


@pytest.mark.timeout(120)
async def test_sigterm_stops_the_engines_it_started(tmp_path):
    """Engines run in their own sessions (real vLLM ones hold GBs): a terminated compare must stop them."""
    argv = [str(BRIXMESH), "bench", "compare", "--tiny", "-c", "oracle", "--out", str(tmp_path)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cli = psutil.Process(proc.pid)
    engines: list[psutil.Process] = []

    def engines_started() -> bool:
        engines[:] = [p for p in cli.children(recursive=True) if "brixmesh.engine_sim" in p.cmdline()]
        return bool(engines)

    try:
        await eventually(engines_started, 60)
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1] == "brixmesh bench: stopped by SIGTERM (engines and routers stopped)"
    assert not any(engine.is_running() and engine.status() != psutil.STATUS_ZOMBIE for engine in engines)
