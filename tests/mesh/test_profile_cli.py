"""``brixmesh profile`` against an engine URL: the profile lands in a file and on the bus; bad flags are one
line and exit status 2."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
from brixmesh.common.bus import Bus
from brixmesh.common.messages import GpuProfile
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import GPU_PROFILES

from tests.engine_sim.sim_engine import MODEL_NAME, sim_engine
from tests.waiting import eventually

BRIXMESH = [sys.executable, "-m", "brixmesh.cli.main"]


def test_profile_without_an_engine_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run([*BRIXMESH, "profile", "--state-dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "brixmesh profile: give either --sim-gpu (simulated types) or --url with --gpu (a real engine)"
    )
    result = subprocess.run([*BRIXMESH, "profile", "--url", "http://127.0.0.1:9", "--gpu", "tpu9",
                             "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no price for GPU type 'tpu9'; give one with --cost tpu9=PRICE" in result.stderr


async def test_profile_of_an_engine_url_is_written_and_published(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    received: list[GpuProfile] = []
    await bus.subscribe(GPU_PROFILES.pattern(), GpuProfile, lambda _s, p: received.append(p))
    # one sequence at a time, 20 ms to the first token and 10 ms per token: about 20 short requests/s
    extra = ["--max-num-seqs", "1", "--time-to-first-token", "20", "--inter-token-latency", "10"]
    with sim_engine(extra, kv_events=False) as engine:
        process = await asyncio.create_subprocess_exec(
            *BRIXMESH, "profile", "--url", engine.base_url, "--gpu", "a10", "--cost", "a10=1.25", "--model",
            MODEL_NAME, "--inputs", "16", "--outputs", "4", "--slo-ttft-ms", "250", "--slo-tpot-ms", "0",
            "--duration", "3", "--warmup", "1", "--precision", "0.5", "--start-rate", "4", "--out",
            str(tmp_path / "profiles"), "--nats-url", nats_server.url, "--state-dir", str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, output.decode()
    stored = msgspec.json.decode((tmp_path / "profiles" / "a10.json").read_bytes(), type=GpuProfile)
    (cell,) = stored.cells
    assert (cell.input_bucket, cell.output_bucket) == (4, 2)
    assert 4 <= cell.max_rate <= 64, output.decode()  # about 20/s; the search's steps are coarse
    assert stored.cost_per_hour == 1.25 and stored.model == MODEL_NAME and stored.source == engine.base_url
    await eventually(lambda: received, 5)
    assert received[0] == stored
