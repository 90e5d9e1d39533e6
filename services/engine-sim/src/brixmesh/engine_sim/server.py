"""Runs one or many simulated engines in this process, each with its own port, cache and ZMQ sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, replace

import uvicorn
from brixmesh.engine_sim.app import build_app
from brixmesh.engine_sim.config import EngineConfig
from brixmesh.engine_sim.replica import Replica
from brixmesh.engine_sim.tokenizer import SimTokenizer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunningReplica:
    replica: Replica
    server: uvicorn.Server
    sock: socket.socket

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    # No listen() here: asyncio's server listens when it starts, so until then connections are refused,
    # as with a real engine that has not opened its port yet.
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    """The process installs its own signal handlers once for all replicas."""

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201 - overrides uvicorn
        yield


def start_replica(
    config: EngineConfig, tokenizer: SimTokenizer, log_level: str = "warning"
) -> RunningReplica:
    if not config.max_model_len:
        config = replace(config, max_model_len=tokenizer.model_max_length)
    sock = bind_socket(config.host, config.port)
    if config.port == 0:
        config = replace(config, port=sock.getsockname()[1])
    replica = Replica(config, tokenizer)
    app = build_app(replica)
    uv_config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        http="httptools",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
    )
    return RunningReplica(replica, _QuietServer(uv_config), sock)


async def _serve_after_startup(item: RunningReplica) -> None:
    """``--startup-duration``: the port opens only once the simulated engine start-up is over."""
    if item.replica.config.startup_delay_s > 0:
        await asyncio.sleep(item.replica.config.startup_delay_s)
    await item.replica.start_transfer()
    item.replica.start()
    await item.server.serve(sockets=[item.sock])


async def serve(configs: list[EngineConfig], log_level: str = "warning") -> int:
    """Serves until SIGINT/SIGTERM (exit 0) or an injected crash of the only replica (exit 1)."""
    tokenizers: dict[str, SimTokenizer] = {}
    running: list[RunningReplica] = []
    try:
        for config in configs:
            key = f"{config.tokenizer_dir}\0{config.chat_template}"
            if key not in tokenizers:
                tokenizers[key] = SimTokenizer(config.tokenizer_dir, config.chat_template)
            running.append(start_replica(config, tokenizers[key], log_level))
    except (OSError, ValueError) as exc:
        for item in running:
            await item.replica.stop()
            item.sock.close()
        print(f"brixmesh-engine-sim: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [loop.create_task(_serve_after_startup(item)) for item in running]
    for item in running:
        while not item.server.started and not item.replica.config.startup_delay_s:
            await asyncio.sleep(0.01)
    print(
        json.dumps(
            {
                "engines": [
                    {
                        "index": i.replica.config.replica_index,
                        "port": i.port,
                        "url": f"http://{i.replica.config.host}:{i.port}",
                        **({"kv_transfer_port": i.replica.transfer.port} if i.replica.transfer else {}),
                    }
                    for i in running
                ]
            }
        ),
        flush=True,
    )
    crash_waits = {loop.create_task(item.replica.on_crash.wait()): item for item in running}
    stop_wait = loop.create_task(stop.wait())
    exit_code = 0
    pending = set(crash_waits) | {stop_wait}
    while True:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if stop_wait in done:
            break
        if len(running) == 1:
            # A lone engine dies abruptly, like a real crash: open streams and sockets just vanish.
            os._exit(1)
        for task in done:
            item = crash_waits[task]
            item.server.should_exit = True
            item.server.force_exit = True
            await item.replica.stop()
        if all(i.replica.on_crash.is_set() for i in running):
            exit_code = 1
            break
    for item in running:
        item.server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in pending:
        task.cancel()
    for item in running:
        await item.replica.stop()
    return exit_code
