"""bench/chaos.py on a minimal fault set (two engines, an engine kill and a kv-index kill) so that the chaos
machinery cannot rot: a real mesh comes up, the load runs, both faults are injected and measured, the report
is written and the verdict is the last line. The full bench (every fault, its targets) is not a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def test_chaos_runs_a_minimal_fault_set(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, str(CHAOS), "--quick", "--engines", "2", "--rate", "3", "--settle", "1",
         "--announce-interval", "0.5", "--only", "engine SIGKILL", "--only", "kv-index", "--out", str(out)],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-2000:]
    verdict = lines[-1]
    expected = "VERDICT: PASS" if done.returncode == 0 else "VERDICT: FAIL"
    assert verdict.startswith(expected), done.stdout[-3000:]

    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["fault"] for r in results] == ["engine SIGKILL", "kv-index SIGKILL"]
    for result in results:
        assert result["requests"] > 0, result
        assert result["recovery_s"] is not None, result
    killed = results[0]
    assert killed["notes"] and killed["notes"][0].startswith("killed default-")
    assert any(r["index_blocks"] > 0 for r in results), results  # the index was compared with cached blocks
    assert "| engine SIGKILL |" in (out / "report.md").read_text()
