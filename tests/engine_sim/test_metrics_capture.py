"""The simulator's vllm: metric families, label keys and histogram buckets equal a real vLLM 0.32 capture."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.engine_sim.sim_engine import sim_engine

CAPTURE = Path(__file__).resolve().parents[1] / "fixtures/vllm-0.32-cpu/metrics_sample_after_load.txt"


def shape(text: str) -> dict[str, set[tuple[tuple[str, ...], str | None]]]:
    """metric name -> {(sorted label keys, le bucket)} for every vllm: sample."""
    out: dict[str, set[tuple[tuple[str, ...], str | None]]] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, labels = line.rpartition(" ")[0].partition("{")
        keys = tuple(sorted(re.findall(r'(\w+)="', labels)))
        le = re.search(r'le="([^"]+)"', labels)
        out.setdefault(name, set()).add((keys, le.group(1) if le else None))
    return out


def help_and_types(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.startswith(("# HELP vllm:", "# TYPE vllm:"))}


def test_metrics_shape_equals_real_capture() -> None:
    with sim_engine(kv_events=False) as sim:
        with httpx.Client(base_url=sim.base_url) as c:
            c.post("/v1/completions", json={"prompt": "warm", "max_tokens": 2})
            text = c.get("/metrics").text
    real = CAPTURE.read_text()
    ours = shape(text)
    ours.pop("vllm:lora_requests_info")  # the capture's engine ran without --enable-lora
    assert ours == shape(real)
    ours_help = {line for line in help_and_types(text) if "lora_requests_info" not in line}
    assert ours_help == help_and_types(real)
