"""P/D KV transfer between simulated engines: vLLM's ``--kv-transfer-config`` and SGLang's bootstrap.

Connectors (``kv_connector``):
- ``NixlConnector`` (vLLM's pull scheduler): a producer (``kv_producer``/``kv_both``) that gets a request with
  ``kv_transfer_params.do_remote_decode`` generates one token, keeps the prompt's blocks for
  ``kv_lease_duration`` seconds (extra config, default 30, vLLM's) and answers with the fields and types of
  vLLM 0.32's ``request_finished``. A consumer given those parameters pulls the blocks from the producer's
  transfer port, then computes only the prompt's last token. Parameters that are missing, unknown to the
  producer or expired mean recompute, counted (``vllm:nixl_num_failed_transfers``; the producer counts its
  expired leases in ``vllm:nixl_num_kv_expired_reqs``).
- ``ExampleConnector`` (shared storage, no parameters): a producer records each prompt's full blocks under
  ``shared_storage_path`` (``(n - 1) // block_size`` blocks, keyed by those tokens, as vLLM's); a consumer
  looks for ``(n - 2) // block_size`` blocks of its prompt (so, as in vLLM, a prompt of k blocks + 1 token is
  never found) and, found, reads them instead of computing the prompt.

SGLang (``--disaggregation-mode prefill|decode``): a request carrying ``bootstrap_room`` is prefilled on the
prefill engine and held under that room on its bootstrap port; the decode engine (sent the same request at
the same time) waits for the room there and pulls it.

How a pull moves the KV (``sim_transfer`` in the extra config): ``tcp`` sends the modelled bytes (prompt
tokens x the model profile's KV bytes per token) over the connection; ``modelled`` (default) exchanges only
the header and the consumer waits the time the GPU profile's link takes for those bytes (plus a fixed
overhead). Either way the producer's blocks are released once pulled, or when the lease ends.

Wire protocol of the transfer port: the consumer sends one JSON line ``{"key", "wait_s", "send_bytes"}``; the
producer answers one JSON line ``{"ok", "num_tokens", "nbytes"}`` followed, with ``send_bytes``, by ``nbytes``
bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
from prometheus_client import CollectorRegistry, Counter

from brixmesh.engine_sim.request import SimRequest

PULL_CONNECTORS = frozenset({"NixlConnector", "NixlPullConnector"})
STORAGE_CONNECTORS = frozenset({"ExampleConnector"})
ROLES = frozenset({"kv_producer", "kv_consumer", "kv_both"})
SGLANG_BOOTSTRAP_PORT = 8998
_CHUNK = bytes(1 << 20)
_CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class KvTransferConfig:
    connector: str
    """``NixlConnector``-style pull, ``ExampleConnector`` shared storage, or ``sglang`` (bootstrap)."""
    role: str
    """``kv_producer``, ``kv_consumer`` or ``kv_both`` (SGLang: prefill = producer, decode = consumer)."""
    lease_s: float = 30.0
    transfer: Literal["tcp", "modelled"] = "modelled"
    port: int = 0
    """The transfer port (NIXL side channel, SGLang bootstrap); 0: any free one."""
    storage_path: str = ""

    @property
    def produces(self) -> bool:
        return self.role in ("kv_producer", "kv_both")

    @property
    def consumes(self) -> bool:
        return self.role in ("kv_consumer", "kv_both")

    @property
    def serves_pulls(self) -> bool:
        return self.produces and self.connector not in STORAGE_CONNECTORS


def parse_kv_transfer_config(text: str, replica_index: int = 0) -> KvTransferConfig:
    """vLLM's ``--kv-transfer-config`` JSON; ValueError with a one-line message."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--kv-transfer-config is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("--kv-transfer-config must be a JSON object")
    connector = raw.get("kv_connector")
    if connector not in PULL_CONNECTORS | STORAGE_CONNECTORS:
        known = ", ".join(sorted(PULL_CONNECTORS | STORAGE_CONNECTORS))
        raise ValueError(f"kv_connector {connector!r} is not simulated; choose one of {known}")
    role = raw.get("kv_role")
    if role not in ROLES:
        raise ValueError(f"kv_role is required with kv_connector; choose one of {', '.join(sorted(ROLES))}")
    extra = raw.get("kv_connector_extra_config") or {}
    if not isinstance(extra, dict):
        raise ValueError("kv_connector_extra_config must be a JSON object")
    transfer = extra.get("sim_transfer", "modelled")
    if transfer not in ("tcp", "modelled"):
        raise ValueError(f"sim_transfer must be 'tcp' or 'modelled', not {transfer!r}")
    lease = extra.get("kv_lease_duration", 30)
    if isinstance(lease, bool) or not isinstance(lease, int | float) or lease <= 0:
        raise ValueError("kv_lease_duration must be a positive number of seconds")
    storage = extra.get("shared_storage_path", "")
    if connector in STORAGE_CONNECTORS and not storage:
        raise ValueError(f"{connector} needs kv_connector_extra_config.shared_storage_path")
    side_channel = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT")
    port = int(side_channel) + replica_index if side_channel else 0  # + DP rank, as vLLM
    return KvTransferConfig(connector, role, float(lease), transfer, port, str(storage))


def sglang_config(mode: str, bootstrap_port: int, replica_index: int) -> KvTransferConfig:
    """SGLang's ``--disaggregation-mode prefill|decode`` and ``--disaggregation-bootstrap-port``."""
    role = "kv_producer" if mode == "prefill" else "kv_consumer"
    return KvTransferConfig("sglang", role, port=bootstrap_port + replica_index if bootstrap_port else 0)


def transfer_counters(
    registry: CollectorRegistry, config: KvTransferConfig, model_name: str
) -> tuple[Counter, Counter]:
    """(failed pulls, expired leases): vLLM's NIXL connector names, SGLang-style names in bootstrap mode."""
    if config.connector == "sglang":
        names = (
            ("sglang:num_transfer_failed_reqs", "Requests whose KV transfer failed (recomputed)."),
            ("sglang:num_kv_leases_expired", "Prefilled requests whose KV was never pulled in time."),
        )
    else:
        names = (
            ("vllm:nixl_num_failed_transfers", "Number of failed NIXL KV Cache transfers."),
            ("vllm:nixl_num_kv_expired_reqs", "Number of requests that had their KV expire."),
        )
    failed, expired = (
        Counter(name, doc, ["model_name"], registry=registry).labels(model_name) for name, doc in names
    )
    return failed, expired


class _Header(msgspec.Struct):
    ok: bool
    num_tokens: int = 0
    nbytes: int = 0


class _Pull(msgspec.Struct):
    key: str
    wait_s: float = 0.0
    send_bytes: bool = False


@dataclass(slots=True)
class _Lease:
    request: SimRequest
    expiry: asyncio.TimerHandle


@dataclass(frozen=True, slots=True)
class RemoteKv:
    """Where a consumer finds a request's prompt KV."""

    host: str
    port: int
    key: str
    wait_s: float = 0.0


class KvTransfer:
    """One engine's side of P/D transfer.

    ``release`` frees a held request's blocks in the engine; ``on_failed`` and ``on_expired`` count.
    Times given to the engine are simulated seconds; waits on the wire are wall seconds (x ``time_scale``).
    """

    def __init__(
        self,
        config: KvTransferConfig,
        *,
        host: str,
        block_size: int,
        kv_bytes_per_token: int,
        link_bytes_per_s: float,
        overhead_s: float,
        time_scale: float,
        release: Callable[[SimRequest], None],
        on_failed: Callable[[], None],
        on_expired: Callable[[], None],
    ) -> None:
        self.config = config
        self.host = host
        self.block_size = block_size
        self.kv_bytes_per_token = kv_bytes_per_token
        self.link_bytes_per_s = link_bytes_per_s
        self.overhead_s = overhead_s
        self.time_scale = time_scale
        self._release = release
        self._on_failed = on_failed
        self._on_expired = on_expired
        self._leases: dict[str, _Lease] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._server: asyncio.Server | None = None
        self.port = config.port

    async def start(self) -> None:
        if self.config.serves_pulls:
            self._server = await asyncio.start_server(self._serve, self.host, self.config.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        for lease in self._leases.values():
            lease.expiry.cancel()
        self._leases.clear()

    # --- producer ---------------------------------------------------------------------------------------

    def lease_key(self, body: dict[str, Any], kv_params: dict[str, Any] | None) -> str | None:
        """The key a producer holds this request's KV under once prefilled ("" = the engine's request id);
        None when the request is served as usual."""
        if not self.config.produces:
            return None
        if self.config.connector == "sglang":
            room = body.get("bootstrap_room")
            return f"room-{room}" if isinstance(room, int) and not isinstance(room, bool) else None
        if self.config.connector in STORAGE_CONNECTORS:
            return None
        return "" if kv_params and kv_params.get("do_remote_decode") else None

    def hold(self, request: SimRequest) -> None:
        """A prefilled request finished: its blocks stay until pulled or until the lease ends."""
        key = request.kv_lease_key
        assert key is not None
        previous = self._leases.pop(key, None)
        if previous is not None:  # the same SGLang room twice: the older one is released
            previous.expiry.cancel()
            self._release(previous.request)
        expiry = asyncio.get_running_loop().call_later(
            self.config.lease_s * self.time_scale, self._expire, key
        )
        self._leases[key] = _Lease(request, expiry)
        arrived = self._arrived.get(key)
        if arrived is not None:
            arrived.set()

    def response_params(self, request: SimRequest, block_ids: list[int], engine_id: str) -> dict[str, Any]:
        """vLLM 0.32's NIXL pull scheduler ``request_finished`` parameters of a prefill node."""
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": [block_ids],  # one list per KV cache group
            "remote_engine_id": engine_id,
            "remote_request_id": request.request_id,
            "remote_host": self.host,
            "remote_port": self.port,
            "tp_size": 1,
            "dcp_size": 1,
            "pp_size": 1,
            "remote_num_tokens": request.num_prompt_tokens,
            "remote_blocks_expiry_time": None,  # set by vLLM for blocks pinned on a decode node only
            "transfer_mode": "pull",
            "remote_prefill_cached_tokens": max(request.num_cached_tokens, 0),
        }

    def record_stored_prompt(self, request: SimRequest) -> None:
        """ExampleConnector producer: the prompt's full blocks are now in shared storage."""
        if self.config.connector in STORAGE_CONNECTORS and self.config.produces:
            stored = (request.num_prompt_tokens - 1) // self.block_size * self.block_size
            if stored:
                path = self._storage_file(request.prompt_token_ids[:stored], request.cache_salt)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()

    def _expire(self, key: str) -> None:
        lease = self._leases.pop(key, None)
        if lease is not None:
            self._release(lease.request)
            self._on_expired()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            pull = msgspec.json.decode(await reader.readline(), type=_Pull)
            lease = await self._claim(pull.key, pull.wait_s)
            if lease is None:
                writer.write(msgspec.json.encode(_Header(False)) + b"\n")
                await writer.drain()
                return
            try:
                tokens = lease.request.num_prompt_tokens
                nbytes = tokens * self.kv_bytes_per_token
                writer.write(msgspec.json.encode(_Header(True, tokens, nbytes)) + b"\n")
                if pull.send_bytes:
                    view = memoryview(_CHUNK)
                    left = nbytes
                    while left > 0:
                        writer.write(view[: min(left, len(_CHUNK))])
                        left -= len(_CHUNK)
                        await writer.drain()
                await writer.drain()
            finally:
                self._release(lease.request)
        except (OSError, ValueError, msgspec.DecodeError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _claim(self, key: str, wait_s: float) -> _Lease | None:
        """The lease of ``key`` taken out of the table, waiting up to ``wait_s`` (SGLang: the prefill may
        still run)."""
        if key not in self._leases and wait_s > 0:
            arrived = self._arrived.setdefault(key, asyncio.Event())
            try:
                await asyncio.wait_for(arrived.wait(), min(wait_s, self.config.lease_s) * self.time_scale)
            except asyncio.TimeoutError:
                pass
            finally:
                self._arrived.pop(key, None)
        lease = self._leases.pop(key, None)
        if lease is not None:
            lease.expiry.cancel()
        return lease

    # --- consumer ---------------------------------------------------------------------------------------

    def remote(self, body: dict[str, Any], kv_params: dict[str, Any] | None) -> RemoteKv | None:
        """Where this request's prompt KV waits, or None (computed here)."""
        if not self.config.consumes:
            return None
        if self.config.connector == "sglang":
            host, port, room = (body.get(k) for k in ("bootstrap_host", "bootstrap_port", "bootstrap_room"))
            if isinstance(host, str) and isinstance(port, int) and isinstance(room, int):
                return RemoteKv(host, port, f"room-{room}", wait_s=self.config.lease_s)
            return None
        if not kv_params or not kv_params.get("do_remote_prefill"):
            return None
        host, port, key = (kv_params.get(k) for k in ("remote_host", "remote_port", "remote_request_id"))
        if isinstance(host, str) and isinstance(port, int) and isinstance(key, str):
            return RemoteKv(host, port, key)
        self._on_failed()  # malformed parameters: vLLM fails the transfer and recomputes
        return None

    async def pull(self, remote: RemoteKv) -> float | None:
        """Pull the blocks; the simulated seconds until they are usable, None when the pull failed (the
        consumer then recomputes the prompt, counted)."""
        send_bytes = self.config.transfer == "tcp"
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(remote.host, remote.port), _CONNECT_TIMEOUT_S
            )
            writer.write(msgspec.json.encode(_Pull(remote.key, remote.wait_s, send_bytes)) + b"\n")
            await writer.drain()
            header = msgspec.json.decode(await reader.readline(), type=_Header)
            if not header.ok:
                raise ValueError("the producer holds no such blocks (unknown or expired)")
            if send_bytes:
                left = header.nbytes
                while left > 0:
                    data = await reader.read(min(left, 1 << 20))
                    if not data:
                        raise ValueError("the producer closed the connection mid-transfer")
                    left -= len(data)
                return 0.0
            return self.overhead_s + header.nbytes / self.link_bytes_per_s
        except (OSError, ValueError, asyncio.TimeoutError, msgspec.DecodeError):
            self._on_failed()
            return None
        finally:
            if writer is not None:
                writer.close()

    def stored_tokens(self, prompt: list[int], cache_salt: str | None) -> int:
        """ExampleConnector consumer: prompt tokens found in shared storage (0: none)."""
        if self.config.connector not in STORAGE_CONNECTORS or not self.config.consumes:
            return 0
        wanted = (len(prompt) - 2) // self.block_size * self.block_size
        return wanted if wanted > 0 and self._storage_file(prompt[:wanted], cache_salt).exists() else 0

    def storage_seconds(self, tokens: int) -> float:
        return self.overhead_s + tokens * self.kv_bytes_per_token / self.link_bytes_per_s

    def _storage_file(self, prompt: list[int], cache_salt: str | None) -> Path:
        digest = hashlib.sha256(json.dumps([prompt, cache_salt]).encode()).hexdigest()
        return Path(self.config.storage_path) / digest
