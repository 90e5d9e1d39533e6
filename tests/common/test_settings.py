import subprocess
import sys

import pytest

from brixmesh.common.settings import ServiceSettings, SettingsError, load_settings


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIXMESH_NATS_URL", "nats://127.0.0.1:1234")
    monkeypatch.setenv("BRIXMESH_PORT", "9000")
    settings = load_settings(ServiceSettings)
    assert settings.nats_url == "nats://127.0.0.1:1234"
    assert settings.port == 9000


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BRIXMESH_LOG_LEVEL", "loud", "BRIXMESH_LOG_LEVEL"),
        ("BRIXMESH_PORT", "99999", "BRIXMESH_PORT"),
        ("BRIXMESH_NATS_URL", "http://127.0.0.1:4222", "BRIXMESH_NATS_URL"),
    ],
)
def test_bad_value_is_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings(ServiceSettings)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message


def test_service_process_reports_bad_setting_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "brixmesh.router"],
        env={"BRIXMESH_LOG_LEVEL": "loud", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("brixmesh-router: invalid setting BRIXMESH_LOG_LEVEL")


def test_service_process_reports_unreachable_nats_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "brixmesh.autoscaler"],
        env={"BRIXMESH_NATS_URL": "nats://127.0.0.1:9", "BRIXMESH_NATS_CONNECT_TIMEOUT_S": "1",
             "BRIXMESH_LOG_LEVEL": "error", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "cannot reach NATS at nats://127.0.0.1:9 (set BRIXMESH_NATS_URL)" in lines[0], result.stderr
