"""A real Ray cluster on loopback for the module: a head node (no CPUs: it only runs Ray's control plane)
and two worker nodes, each a set of separate processes (GCS, raylets, workers) with its own custom resource.
Teardown checks that no process of the cluster's session and no engine of its groups is left."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",  # 2.60's default token auth: every node and the driver must agree
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    # Ray rewrites a 127.0.0.1 address to the host's outward one (found by routing towards 8.8.8.8), which the
    # loopback GCS does not listen on; this keeps drivers on loopback (its name says Windows/OSX, not only)
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # a loaded 2-core host: each node's agent and each actor's worker process may take a minute to start
    "RAY_agent_register_timeout_ms": "180000",
    "RAY_raylet_start_wait_time_s": "180",
    "RAY_worker_register_timeout_seconds": "180",
}
_NODE = {
    "node_ip_address": "127.0.0.1",
    "include_dashboard": False,
    "object_store_memory": 80 << 20,
}
_HEAD_SYSTEM_CONFIG = {
    # notice a lost node in ~3 s (default: 30 s), the test waits for the replacement group
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


@dataclass
class LoopbackCluster:
    cluster: Cluster
    workers: dict[str, object] = field(default_factory=dict)
    """Worker nodes by their custom resource name."""

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self, resource: str) -> str:
        """Start a worker node with two CPUs (two groups' ranks) and ``{resource: 1}``; its node id."""
        node = self.cluster.add_node(num_cpus=2, resources={resource: 1}, **_NODE)
        self.workers[resource] = node
        return node.node_id

    def kill_worker(self, resource: str) -> None:
        """SIGKILL every process of the node (its raylet and workers): a lost machine."""
        self.cluster.remove_node(self.workers.pop(resource), allow_graceful=False)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LoopbackCluster]:
    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**_NODE, "num_cpus": 0, "_system_config": _HEAD_SYSTEM_CONFIG},
    )
    session = Path(cluster.head_node.get_session_dir_path()).name
    loopback = LoopbackCluster(cluster)
    try:
        loopback.add_worker("worker_a")
        loopback.add_worker("worker_b")
        yield loopback
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    left = wait_gone(lambda: processes_mentioning(session), timeout_s=30)
    assert not left, f"Ray processes of {session} left running: {left}"


def processes_mentioning(text: str) -> dict[int, str]:
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found[int(proc.name)] = cmdline[:200]
    return found


def wait_gone(listing: Callable[[], dict[int, str]], timeout_s: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout_s
    while (left := listing()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left

