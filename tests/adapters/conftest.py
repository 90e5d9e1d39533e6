from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from brixmesh.common.ports import free_port


def make_adapter(
    directory: Path, *, base: str = "tiny-llama", rank: int = 8, weights: bytes = b"w" * 64
) -> Path:
    """An adapter directory as peft writes it (config + weights); the weights need not be real for the
    simulator."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": f"/models/{base}", "r": rank, "peft_type": "LORA"})
    )
    (directory / "adapter_model.safetensors").write_bytes(weights)
    return directory


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3 API in server mode on a free port: the URL to give boto3 as ``endpoint_url``."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
