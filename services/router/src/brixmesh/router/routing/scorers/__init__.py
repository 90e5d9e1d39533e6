"""Built-in scorers, one module each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from brixmesh.router.routing.pd import PdPairing
from brixmesh.router.routing.scorers.least_kv_cache import LeastKvCache
from brixmesh.router.routing.scorers.least_latency import LeastLatency
from brixmesh.router.routing.scorers.least_request import LeastRequest
from brixmesh.router.routing.scorers.prefix_cache import PrefixCache
from brixmesh.router.routing.scorers.random_choice import RandomChoice
from brixmesh.router.routing.scorers.round_robin import RoundRobin
from brixmesh.router.routing.scorers.session import SessionAffinity
from brixmesh.router.routing.scorers.throughput import Throughput
from brixmesh.router.routing.scorers.vtc import VirtualTokenCounter

if TYPE_CHECKING:
    from brixmesh.router.routing.registry import StrategyRegistry


def register_builtin(registry: StrategyRegistry) -> None:
    registry.register_scorer("random", lambda env: RandomChoice())
    registry.register_scorer("round-robin", lambda env: RoundRobin())
    registry.register_scorer("least-request", lambda env: LeastRequest())
    registry.register_scorer("least-kv-cache", lambda env: LeastKvCache())
    registry.register_scorer("least-latency", lambda env: LeastLatency())
    registry.register_scorer("throughput", lambda env: Throughput())
    registry.register_scorer(
        "prefix-cache", lambda env: PrefixCache(env.prefix_index, block_chars=env.prefix_block_chars)
    )
    registry.register_scorer("session", lambda env: SessionAffinity())
    registry.register_scorer("vtc", lambda env: VirtualTokenCounter())
    registry.register_scorer(
        "pd", lambda env: PdPairing(env.prefix_index, env.guard, block_chars=env.prefix_block_chars)
    )
