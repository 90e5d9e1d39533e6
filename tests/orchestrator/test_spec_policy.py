"""The deployment spec policy: env and engine args that would load code or redirect paths are refused with
a 400 naming the field, and GET never shows env values (unit, and through a real orchestrator process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from brixmesh.common.servers import NatsServer
from brixmesh.orchestrator.policy import REDACTED
from brixmesh.orchestrator.spec import SpecError, parse_spec
from tests.orchestrator.orchestrator_proc import run_orchestrator


@pytest.mark.parametrize(
    "env",
    [{"LD_PRELOAD": "/tmp/x.so"}, {"LD_LIBRARY_PATH": "/tmp"}, {"DYLD_INSERT_LIBRARIES": "/tmp/x"},
     {"PYTHONPATH": "/tmp"}, {"PYTHONSTARTUP": "/tmp/x.py"}, {"PATH": "/tmp"}, {"HF_MODULES_PATH": "/x"},
     {"GLIBC_TUNABLES": "x"}, {"NODE_OPTIONS": "--require /x"}, {"BRIXMESH_POD": "other"},
     {"SSL_CERT_FILE": "/tmp/ca"}, {"https_proxy": "http://evil"}, {"BAD-NAME": "1"}, {"X": "a\x00b"},
     {"X": REDACTED}],
)  # fmt: skip
def test_refused_env(env: dict[str, str]) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec({"name": "a", "model": "m", "env": env})
    assert refused.value.param == "env"
    assert next(iter(env)) in str(refused.value) or "variable name" in str(refused.value)


@pytest.mark.parametrize(
    "args",
    [["--trust-remote-code"], ["--trust-remote"], ["--worker-cls", "x.Y"], ["--worker_extension_cls=x.Y"],
     "--middleware x.y", ["--tool-parser-plugin", "/tmp/p.py"], ["--config", "/tmp/c.yaml"],
     ["--allowed-local-media-path=/"], ["--enable-prompt-embeds"], ["--logits-processors", "x.Y"],
     ["--chat-template", "/etc/passwd"], ["--ssl-keyfile", "/k"], ["--x\x00"]],
)  # fmt: skip
def test_refused_engine_args(args: list[str] | str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec({"name": "a", "model": "m", "engine_args": args})
    assert refused.value.param == "engine_args"
    assert "not allowed" in str(refused.value) or "NUL" in str(refused.value)


def test_ordinary_tuning_passes_and_env_values_are_redacted() -> None:
    spec = parse_spec({
        "name": "a", "model": "m",
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0",
                "HF_TOKEN": "hf_x"},
        "engine_args": ["--max-num-seqs", "8", "--chat-template-content-format=string",
                        "--enable-prefix-caching"],
    })  # fmt: skip
    assert spec.env["HF_TOKEN"] == "hf_x" and spec.to_dict()["env"]["HF_TOKEN"] == "hf_x"
    assert spec.public_dict()["env"] == dict.fromkeys(spec.env, REDACTED)


async def test_http_refuses_dangerous_specs_and_never_echoes_env(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    async with run_orchestrator(fresh_nats_server.url, tmp_path) as orch:
        refused = await orch.http.put(
            "/v1/deployments/a", json={"model": "m", "replicas": 0, "env": {"LD_PRELOAD": "/tmp/evil.so"}}
        )
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["param"] == "env" and "LD_PRELOAD is not allowed" in error["message"]
        refused = await orch.http.put(
            "/v1/deployments/a", json={"model": "m", "replicas": 0, "engine_args": ["--trust-remote-code"]}
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "engine_args"
        assert (await orch.http.get("/v1/deployments/a")).status_code == 404

        secret = "hf_secret_value_never_echoed"
        created = await orch.http.put(
            "/v1/deployments/a", json={"model": "m", "replicas": 0, "env": {"HF_TOKEN": secret}}
        )
        assert created.status_code == 201 and secret not in created.text
        assert created.json()["spec"]["env"] == {"HF_TOKEN": REDACTED}
        patched = await orch.http.patch("/v1/deployments/a", json={"labels": {"team": "x"}})
        assert patched.status_code == 200 and secret not in patched.text
        for path in ("/v1/deployments/a", "/v1/deployments", "/v1/pods"):
            assert secret not in (await orch.http.get(path)).text
        refused = await orch.http.patch("/v1/deployments/a", json={"env": {"PYTHONPATH": "/tmp"}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "env"
