"""Adapter artifacts: found, downloaded, verified and cached on this node.

- a local directory is used in place;
- ``hf://org/name[@revision]`` is a snapshot in the Hugging Face hub cache (offline: nothing is fetched);
- ``s3://bucket/prefix`` is downloaded through the S3 API (boto3) into ``<cache>/.partial-*``, every file's
  size checked against the listing, the directory verified, then renamed to its final name: an engine never
  sees half an adapter, and a finished download is reused.

Every artifact must hold ``adapter_config.json`` and non-empty weights (``adapter_model.safetensors`` or
``adapter_model.bin``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class ArtifactError(Exception):
    """The artifact cannot be used; ``str()`` says why in one line."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    rank: int
    """The adapter's largest LoRA rank (``r``, or the largest of ``rank_pattern``)."""
    base_model: str
    """``base_model_name_or_path`` of its adapter_config.json ("" when absent)."""


def inspect_adapter(path: Path) -> Artifact:
    if not path.is_dir():
        raise ArtifactError(f"no adapter directory at {path}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} has no {CONFIG_FILE}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path / CONFIG_FILE} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{path / CONFIG_FILE} is not a JSON object")
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights or all(weight.stat().st_size == 0 for weight in weights):
        raise ArtifactError(f"{path} has no adapter weights ({' or '.join(WEIGHT_FILES)})")
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    try:
        rank = max(int(value) for value in ranks)
    except (TypeError, ValueError):
        raise ArtifactError(f"{path / CONFIG_FILE} has a non-integer rank {ranks}") from None
    return Artifact(path=path, rank=rank, base_model=str(config.get("base_model_name_or_path") or ""))


def base_model_matches(declared: str, served: str) -> bool:
    """Whether adapter_config.json's ``base_model_name_or_path`` (a hub id or a local path) names the model
    the pods serve: equal, or its last path component is (engines serve a directory under a short name)."""
    return not declared or declared == served or declared.rstrip("/").rsplit("/", 1)[-1] == served


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"


class ArtifactStore:
    def __init__(
        self, cache_dir: Path, *, hf_cache_dir: Path, credentials_dir: Path | None, s3_endpoint_url: str
    ) -> None:
        self.cache_dir = cache_dir
        self.hf_cache_dir = hf_cache_dir
        self.credentials_dir = credentials_dir
        self.s3_endpoint_url = s3_endpoint_url

    def fetch(self, artifact: str, credentials: str | None = None) -> Artifact:
        """The verified local copy of ``artifact`` (blocking: run it in a thread)."""
        if artifact.startswith("s3://"):
            return self._fetch_s3(artifact, credentials)
        if artifact.startswith("hf://"):
            return inspect_adapter(self._hf_snapshot(artifact.removeprefix("hf://")))
        return inspect_adapter(Path(artifact))

    def _hf_snapshot(self, reference: str) -> Path:
        repo, _, revision = reference.partition("@")
        if repo.count("/") != 1:
            raise ArtifactError(f"hf://{reference}: expected hf://org/name[@revision]")
        folder = self.hf_cache_dir / ("models--" + repo.replace("/", "--"))
        revision = revision or "main"
        ref_file = folder / "refs" / revision
        commit = ref_file.read_text().strip() if ref_file.is_file() else revision
        snapshot = folder / "snapshots" / commit
        if not snapshot.is_dir():
            raise ArtifactError(f"hf://{reference} is not in the Hugging Face cache {self.hf_cache_dir}")
        return snapshot

    def _credentials(self, name: str | None) -> S3Credentials | None:
        if name is None:
            return None
        if self.credentials_dir is None:
            raise ArtifactError(f"credentials {name!r} requested but BRIXMESH_CREDENTIALS_DIR is not set")
        path = self.credentials_dir / f"{name}.yaml"
        try:
            data: Any = yaml.safe_load(path.read_text())
            return S3Credentials(**data)
        except FileNotFoundError:
            raise ArtifactError(f"no credentials file {path}") from None
        except (OSError, yaml.YAMLError, TypeError) as exc:
            raise ArtifactError(f"credentials file {path} is invalid: {exc}") from None

    def _fetch_s3(self, url: str, credentials: str | None) -> Artifact:
        key = hashlib.sha256(f"{url}\0{credentials or ''}".encode()).hexdigest()[:24]
        target = self.cache_dir / key
        if target.is_dir():
            return inspect_adapter(target)
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ArtifactError(f"{url}: expected s3://bucket/prefix")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        client = self._s3_client(self._credentials(credentials))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=".partial-"))
        try:
            listed = self._download(client, bucket, prefix, partial, url)
            for relative, size in listed.items():
                found = (partial / relative).stat().st_size
                if found != size:
                    raise ArtifactError(f"{url}: {relative} is {found} bytes, the bucket lists {size}")
            inspect_adapter(partial)
            try:
                os.rename(partial, target)
            except OSError:
                if not target.is_dir():  # another download finished first: use it
                    raise
                shutil.rmtree(partial, ignore_errors=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return inspect_adapter(target)

    def _s3_client(self, credentials: S3Credentials | None) -> Any:
        import boto3  # imported on first use: a mesh without s3:// artifacts does not pay for it

        options: dict[str, Any] = {"endpoint_url": self.s3_endpoint_url or None, "region_name": "us-east-1"}
        if credentials is not None:
            options.update(
                aws_access_key_id=credentials.access_key_id,
                aws_secret_access_key=credentials.secret_access_key,
                aws_session_token=credentials.session_token or None,
                endpoint_url=credentials.endpoint_url or options["endpoint_url"],
                region_name=credentials.region,
            )
        return boto3.client("s3", **options)

    @staticmethod
    def _download(client: Any, bucket: str, prefix: str, into: Path, url: str) -> dict[str, int]:
        import botocore.exceptions

        listed: dict[str, int] = {}
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    relative = item["Key"][len(prefix) :]
                    if not relative or relative.endswith("/"):
                        continue
                    destination = (into / relative).resolve()
                    if into.resolve() not in destination.parents:
                        raise ArtifactError(
                            f"{url}: object key {item['Key']!r} escapes the adapter directory"
                        )
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, item["Key"], str(destination))
                    listed[relative] = int(item["Size"])
        except botocore.exceptions.BotoCoreError as exc:
            raise ArtifactError(f"{url}: {exc}") from None
        except botocore.exceptions.ClientError as exc:
            raise ArtifactError(f"{url}: {exc.response.get('Error', {}).get('Message') or exc}") from None
        if not listed:
            raise ArtifactError(f"{url}: no objects under this prefix")
        return listed
