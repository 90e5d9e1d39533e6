"""Record one real vLLM 0.32 (CPU) prefill/decode exchange over NixlConnector, for the simulator's P/D tests.

Starts a prefill and a decode engine (``tests/engine/vllm_pd.py``: tiny model, ``kv_buffer_device`` cpu),
sends the prefill request, passes its ``kv_transfer_params`` to decode, and writes both requests and
responses, the engines' P/D arguments and decode's prompt-token counters. Run from the repository root::

    PYTHONPATH=. .venv/bin/python scripts/record_vllm_pd.py tests/fixtures/vllm-0.32-cpu/pd_nixl_exchange.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from brixmesh.common.vllm_cpu import find_install

from tests.engine.vllm_pd import PD_PROMPT, decode_request, pd_pair, prefill_request, prompt_tokens_by_source


def main(out: Path) -> None:
    with pd_pair("nixl", find_install()) as pair, httpx.Client(timeout=120.0) as client:
        body = {"model": pair.prefill.model, "prompt": PD_PROMPT, "max_tokens": 16, "temperature": 0}
        step1 = prefill_request(body, "nixl")
        prefill = client.post(f"{pair.prefill.base_url}/v1/completions", json=step1)
        prefill.raise_for_status()
        step2 = decode_request(body, prefill.json())
        decode = client.post(f"{pair.decode.base_url}/v1/completions", json=step2)
        decode.raise_for_status()
        metrics = client.get(f"{pair.decode.base_url}/metrics").text
        record = {
            "engine_args": pair.engine_args,
            "prefill_request": step1,
            "prefill_response": prefill.json(),
            "decode_request": step2,
            "decode_response": decode.json(),
            "decode_prompt_tokens_by_source": prompt_tokens_by_source(metrics),
        }
    out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: record_vllm_pd.py OUT.json")
    main(Path(sys.argv[1]))
