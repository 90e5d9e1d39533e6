"""Contender names on the command line: ``brixmesh:<strategy>``, ``smg:<policy>``, ``vllm-router:<policy>``,
``oracle``, ``client-random``. A brixmesh contender may carry router settings after its strategy, each
``;NAME=value`` (``brixmesh:kv-aware:3,least-request:2;BRIXMESH_LEAD_GAIN=0``): variants of one strategy are
then compared on the same engines in one run."""

from __future__ import annotations

from brixbench.contenders.base import Contender
from brixbench.contenders.brixmesh import BrixmeshRouter, MeshProvider
from brixbench.contenders.peers import Smg, VllmRouter
from brixbench.contenders.reference import DirectRandom, Oracle

COMPOSITION = "kv-aware:3,least-request:2"
"""brixmesh's precise composition: engine-event prefix affinity, restrained by in-flight load."""
COST_MODEL = "cost-model"
"""Predicted time to first token per pod (uncached tokens, queued prefill, running decodes, fitted speeds)."""

DEFAULT_CONTENDERS: tuple[str, ...] = (
    "brixmesh:random", "brixmesh:least-request", "brixmesh:prefix-cache", "brixmesh:kv-aware",
    f"brixmesh:{COMPOSITION}", f"brixmesh:{COST_MODEL}", "smg:cache_aware", "vllm-router:cache_aware",
    "vllm-router:kv_aware", "oracle",
)
QUICK_CONTENDERS = DEFAULT_CONTENDERS
VLLM_CONTENDERS: tuple[str, ...] = (
    "client-random", f"brixmesh:{COMPOSITION}", f"brixmesh:{COST_MODEL}", "smg:cache_aware",
    "vllm-router:cache_aware", "oracle",
)
"""Real engines are slow to run: the composition and the cost model against the best peers and the oracle."""


class UnknownContender(ValueError):
    """A contender name the catalogue does not know; ``str()`` lists the known forms."""


def resolve(name: str, mesh: MeshProvider) -> Contender:
    family, _, arg = name.partition(":")
    if family == "brixmesh" and arg:
        strategy, *settings = arg.split(";")
        env = {}
        for setting in settings:
            key, equals, value = setting.partition("=")
            if not (equals and key.startswith("BRIXMESH_")):
                raise UnknownContender(
                    f"contender {name!r}: a router setting is ;BRIXMESH_NAME=value, not {setting!r}"
                )
            env[key] = value
        if strategy:
            return BrixmeshRouter(strategy, mesh, env)
    if family == "smg" and arg:
        return Smg(arg)
    if family == "vllm-router" and arg:
        return VllmRouter(arg)
    if name == "oracle":
        return Oracle()
    if name == "client-random":
        return DirectRandom()
    raise UnknownContender(f"unknown contender {name!r}; use brixmesh:<strategy>, smg:<policy>, "
                           "vllm-router:<policy>, oracle or client-random")


def catalogue() -> list[str]:
    return [*DEFAULT_CONTENDERS, "client-random", "brixmesh:prefix-cache:3,least-request:2", "smg:round_robin",
            "vllm-router:round_robin", "vllm-router:consistent_hash"]
