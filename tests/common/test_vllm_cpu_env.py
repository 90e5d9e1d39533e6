"""The environment every real vLLM engine gets (``brixmesh.common.vllm_cpu.engine_env``)."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from brixmesh.common.vllm_cpu import (
    STARTUP_HOOK_DIR,
    VllmInstall,
    VllmNotInstalled,
    engine_env,
    kv_transfer_config,
    nixl_env,
)

_SYS_ARCH_PRCTL = 158
_ARCH_GET_XCOMP_SUPP = 0x1021
_XTILEDATA = 1 << 18

# Prints the process's permitted extended-state features (ARCH_GET_XCOMP_PERM) as an integer.
_PRINT_PERMITTED_FEATURES = """
import ctypes
features = ctypes.c_uint64()
assert ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(features)) == 0
print(features.value)
"""


def _kernel_offers_amx() -> bool:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    features = ctypes.c_uint64()
    offered = ctypes.CDLL(None).syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_SUPP, ctypes.byref(features))
    return offered == 0 and bool(features.value & _XTILEDATA)


def test_engine_pythonpath_is_only_the_startup_hook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    env = engine_env("0", tmp_path / "venv", tmp_path)
    assert env["PYTHONPATH"] == str(STARTUP_HOOK_DIR)  # our venv's packages must not shadow vLLM's
    assert (STARTUP_HOOK_DIR / "sitecustomize.py").is_file()


@pytest.mark.skipif(not _kernel_offers_amx(), reason="no AMX on this CPU/kernel")
def test_engine_processes_may_use_amx_from_the_start(tmp_path: Path) -> None:
    """vLLM's AMX attention kernel never asks for AMX itself; without the permission it dies of SIGILL."""
    plain = _permitted_features(env=None)
    engine = _permitted_features(env=engine_env("0", tmp_path / "venv", tmp_path))
    assert not plain & _XTILEDATA  # the permission does not survive exec: each interpreter must ask
    assert engine & _XTILEDATA


def _permitted_features(env: dict[str, str] | None) -> int:
    check = [sys.executable, "-c", _PRINT_PERMITTED_FEATURES]
    return int(subprocess.run(check, env=env, capture_output=True, text=True, check=True).stdout)


# Run by the base interpreter (no venv): what an engine process of vLLM's own venv sees of brixmesh.
_PRINT_BRIXMESH_VIEW = """
import importlib.util
import brixmesh, brixmesh.common.vllm_cpu
print(brixmesh.__path__[0])
print(importlib.util.find_spec("nats") is not None)
"""


def test_engine_processes_import_brixmesh_common_but_not_our_venv(tmp_path: Path) -> None:
    """vLLM loads our KV connector by module path (``brixmesh.common.kv_tier_vllm``) in every process."""
    base_python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    env = engine_env("0", tmp_path / "venv", tmp_path)
    shown = subprocess.run([base_python, "-c", _PRINT_BRIXMESH_VIEW], env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    package_dir, sees_nats = shown.stdout.split()
    assert Path(package_dir) == STARTUP_HOOK_DIR.parent.parent
    assert sees_nats == "False"  # our venv's packages would shadow vLLM's


def test_kv_transfer_config_names_vllm_connector_and_role(tmp_path: Path) -> None:
    nixl = json.loads(kv_transfer_config("nixl", "prefill"))
    assert nixl == {"kv_connector": "NixlConnector", "kv_role": "kv_producer", "kv_buffer_device": "cpu"}
    shared = json.loads(kv_transfer_config("shared-storage", "decode", tmp_path))
    assert shared == {
        "kv_connector": "ExampleConnector",
        "kv_role": "kv_consumer",
        "kv_connector_extra_config": {"shared_storage_path": str(tmp_path)},
    }
    with pytest.raises(ValueError, match="'sglang' has no CPU connector"):
        kv_transfer_config("sglang", "prefill")
    with pytest.raises(ValueError, match="needs shared_storage_path"):
        kv_transfer_config("shared-storage", "both")
    with pytest.raises(ValueError, match="role 'prefil' unknown"):
        kv_transfer_config("nixl", "prefil")


def test_nixl_env_needs_the_installed_nixl_package(tmp_path: Path) -> None:
    install = VllmInstall(venv=tmp_path / "vllm-cpu", models=tmp_path / "models")
    with pytest.raises(VllmNotInstalled, match="nixl 1.5.1 not installed"):
        nixl_env(install, 5600)
    install.nixl_dir.mkdir()
    (install.nixl_dir / ".brixmesh-complete").touch()
    env = nixl_env(install, 5600)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(STARTUP_HOOK_DIR), str(install.nixl_dir)]
    assert (env["VLLM_NIXL_SIDE_CHANNEL_HOST"], env["VLLM_NIXL_SIDE_CHANNEL_PORT"]) == ("127.0.0.1", "5600")
