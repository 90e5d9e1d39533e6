"""Loads the real vLLM 0.32 CPU KV-event captures in tests/fixtures/vllm-0.32-cpu/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CAPTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-0.32-cpu"


def load_capture(name: str) -> list[dict[str, Any]]:
    """One dict per ZMQ message: n_frames, topic, seq, seq_bytes, payload_len, payload_hex_head, batch."""
    with open(CAPTURES / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def capture_events(name: str) -> list[dict[str, Any]]:
    """Every event of a capture in publication order."""
    return [event for message in load_capture(name) for event in message["batch"][1]]
