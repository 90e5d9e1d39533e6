"""What the orchestrator applies at start: files, a directory, and the ``brixmesh up`` default deployment."""

from __future__ import annotations

from pathlib import Path

import pytest

from brixmesh.orchestrator.app import initial_specs
from brixmesh.orchestrator.settings import OrchestratorSettings
from brixmesh.orchestrator.spec import SpecError


@pytest.fixture(autouse=True)
def no_orchestrator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("BRIXMESH_DEPLOYMENTS_FILE", "BRIXMESH_DEPLOYMENTS_DIR", "BRIXMESH_DEFAULT_ENGINES",
                "BRIXMESH_DEFAULT_ENGINE", "BRIXMESH_DEFAULT_MODEL"):
        monkeypatch.delenv(key, raising=False)


def settings(**fields: object) -> OrchestratorSettings:
    return OrchestratorSettings(**fields)


def test_nothing_by_default_and_a_default_deployment_for_engines() -> None:
    assert initial_specs(settings()) == []
    (default,) = initial_specs(settings(default_engines=3, default_engine="vllm", default_model="tiny-llama"))
    assert (default.name, default.replicas, default.engine, default.model) == ("default", 3, "vllm", "tiny-llama")


def test_file_then_directory_and_a_file_defined_default_wins(tmp_path: Path) -> None:
    spec_file = tmp_path / "main.yaml"
    spec_file.write_text("- {name: default, model: big, replicas: 1}\n- {name: a, model: m}\n")
    directory = tmp_path / "more"
    directory.mkdir()
    (directory / "b.yaml").write_text("name: b\nmodel: m\n")
    specs = initial_specs(settings(deployments_file=spec_file, deployments_dir=directory, default_engines=2))
    assert [(s.name, s.model) for s in specs] == [("default", "big"), ("a", "m"), ("b", "m")]


def test_a_name_in_both_the_file_and_the_directory_is_an_error(tmp_path: Path) -> None:
    spec_file = tmp_path / "main.yaml"
    spec_file.write_text("name: a\nmodel: m\n")
    directory = tmp_path / "more"
    directory.mkdir()
    (directory / "a.yaml").write_text("name: a\nmodel: other\n")
    with pytest.raises(SpecError, match="deployment files: deployment 'a' is defined twice"):
        initial_specs(settings(deployments_file=spec_file, deployments_dir=directory))
