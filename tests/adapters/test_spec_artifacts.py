"""Adapter specs and artifacts: validation, the Hugging Face cache, and S3 through a real S3 API (moto)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from brixmesh.adapter_manager.artifacts import (
    ArtifactError,
    ArtifactStore,
    base_model_matches,
    inspect_adapter,
)
from brixmesh.adapter_manager.spec import SpecError, load_spec_files, parse_spec

from tests.adapters.conftest import make_adapter


def store(tmp_path: Path, s3_url: str = "", credentials_dir: Path | None = None) -> ArtifactStore:
    return ArtifactStore(
        tmp_path / "cache",
        hf_cache_dir=tmp_path / "hf",
        credentials_dir=credentials_dir,
        s3_endpoint_url=s3_url,
    )


def test_spec_errors_are_one_line() -> None:
    good = {"name": "a", "base_model": "tiny-llama", "artifact": "/x", "replicas": "all"}
    assert parse_spec(good).replicas == "all"
    for bad, words in [
        ({**good, "replicas": 0}, "replicas"),
        ({**good, "replicas": "some"}, "replicas"),
        ({**good, "policy": "random"}, "policy"),
        ({**good, "artifact": "relative/dir"}, "absolute"),
        ({**good, "name": "tiny-llama"}, "differ"),
        ({**good, "min_replicas": 3, "replicas": 2}, "min_replicas"),
        ({**good, "extra": 1}, "extra"),
    ]:
        with pytest.raises(SpecError, match=words) as caught:
            parse_spec(bad)
        assert "\n" not in str(caught.value)


def test_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("adapters:\n- {name: a, base_model: m, artifact: /a}\n")
    (tmp_path / "b.yml").write_text(
        "name: b\nbase_model: m\nartifact: s3://bucket/b\n"
        "---\n- {name: c, base_model: m, artifact: hf://o/c}\n"
    )
    assert [s.name for s in load_spec_files(tmp_path)] == ["a", "b", "c"]
    (tmp_path / "bad.yaml").write_text("name: d\nbase_model: m\n")
    with pytest.raises(SpecError, match="bad.yaml.*artifact"):
        load_spec_files(tmp_path)


def test_local_artifact_is_verified(tmp_path: Path) -> None:
    found = inspect_adapter(make_adapter(tmp_path / "a", rank=16))
    assert (found.rank, found.base_model) == (16, "/models/tiny-llama")
    assert base_model_matches(found.base_model, "tiny-llama") and not base_model_matches(
        found.base_model, "x"
    )
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="no adapter weights"):
        inspect_adapter(tmp_path / "a")
    with pytest.raises(ArtifactError, match="no adapter directory"):
        store(tmp_path).fetch(str(tmp_path / "missing"))


def test_hugging_face_cache_snapshot(tmp_path: Path) -> None:
    repo = tmp_path / "hf" / "models--org--adapter"
    make_adapter(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert store(tmp_path).fetch("hf://org/adapter").path == repo / "snapshots" / "abc123"
    assert store(tmp_path).fetch("hf://org/adapter@abc123").path == repo / "snapshots" / "abc123"
    with pytest.raises(ArtifactError, match="not in the Hugging Face cache"):
        store(tmp_path).fetch("hf://org/other")


def test_s3_download_is_verified_cached_and_never_half_visible(tmp_path: Path, s3_server: str) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "team.yaml").write_text(
        f"access_key_id: testing\nsecret_access_key: testing\nendpoint_url: {s3_server}\n"
    )
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    s3.create_bucket(Bucket="adapters")
    source = make_adapter(tmp_path / "src", weights=b"x" * 5000)
    for file in source.iterdir():
        s3.upload_file(str(file), "adapters", f"team/a/{file.name}")
    s3.put_object(Bucket="adapters", Key="team/broken/adapter_config.json", Body=b"{}")

    artifacts = store(tmp_path, credentials_dir=tmp_path / "creds")
    fetched = artifacts.fetch("s3://adapters/team/a", "team")
    assert fetched.path.parent == tmp_path / "cache"
    assert (fetched.path / "adapter_model.safetensors").read_bytes() == b"x" * 5000
    s3.delete_object(Bucket="adapters", Key="team/a/adapter_model.safetensors")
    assert artifacts.fetch("s3://adapters/team/a", "team").path == fetched.path  # cached on this node

    with pytest.raises(ArtifactError, match="no adapter weights"):
        artifacts.fetch("s3://adapters/team/broken", "team")
    with pytest.raises(ArtifactError, match="no objects"):
        artifacts.fetch("s3://adapters/team/none", "team")
    with pytest.raises(ArtifactError, match="no credentials file"):
        artifacts.fetch("s3://adapters/team/a", "other")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [fetched.path.name]  # no partial left behind
