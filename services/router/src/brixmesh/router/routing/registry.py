"""Strategy names -> scorer factories, and weighted compositions parsed from strings.

``"least-request"`` is one scorer with weight 1; ``"prefix-cache:3,least-request:2,least-kv-cache:2"`` is a
weighted sum. Weights are non-negative numbers; 0 disables a scorer. Unknown names raise :class:`UnknownStrategy`
(the gateway answers 400). Parsed strategies are cached, least recently used out first: the spec may come from
a client's ``routing-strategy`` header, so the cache must not grow with what clients send.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from brixmesh.router.routing.context import Tokenizer
from brixmesh.router.routing.load import LoadTracker
from brixmesh.router.routing.pd import PdPairing
from brixmesh.router.routing.picker import LoadGuard
from brixmesh.router.routing.prefix_index import PrefixIndex
from brixmesh.router.routing.scorer import Scorer


class UnknownStrategy(ValueError):
    """The strategy string names no registered scorer or is malformed; ``str()`` says which part."""


@dataclass(slots=True)
class RoutingEnv:
    """State scorers may share. ``tokenizer`` may be set by extensions (see ``brixmesh.router.kv``)."""

    load: LoadTracker = field(default_factory=LoadTracker)
    prefix_index: PrefixIndex = field(default_factory=PrefixIndex)
    rng: random.Random = field(default_factory=random.Random)
    guard: LoadGuard = field(default_factory=LoadGuard)
    prefix_block_chars: int = 64
    tokenizer: Tokenizer | None = None


ScorerFactory = Callable[[RoutingEnv], Scorer]


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    """The spec as normalised (``"a:3,b:1"``), reported in ``x-brixmesh-strategy``."""
    parts: tuple[tuple[Scorer, float], ...]
    pairing: PdPairing | None = None
    """The ``pd`` scorer when the strategy names it: requests then go through prefill and decode pods."""

    @property
    def has_affinity(self) -> bool:
        return any(scorer.category == "affinity" for scorer, _ in self.parts)

    @property
    def affinity_weight(self) -> float:
        return sum(weight for scorer, weight in self.parts if scorer.category == "affinity")


class StrategyRegistry:
    def __init__(self, env: RoutingEnv | None = None, max_cached: int = 256) -> None:
        self.env = env or RoutingEnv()
        self.max_cached = max_cached
        self._factories: dict[str, ScorerFactory] = {}
        self._instances: dict[str, Scorer] = {}
        self._parsed: OrderedDict[str, Strategy] = OrderedDict()

    def register_scorer(self, name: str, factory: ScorerFactory) -> None:
        if name in self._factories:
            raise ValueError(f"scorer {name!r} is already registered")
        self._factories[name] = factory
        self._parsed.clear()

    @property
    def names(self) -> list[str]:
        return sorted(self._factories)

    def scorer(self, name: str) -> Scorer:
        found = self._instances.get(name)
        if found is None:
            factory = self._factories.get(name)
            if factory is None:
                raise UnknownStrategy(f"unknown routing strategy {name!r}; known: {', '.join(self.names)}")
            found = self._instances[name] = factory(self.env)
        return found

    def instances(self) -> list[Scorer]:
        return list(self._instances.values())

    def strategy(self, spec: str) -> Strategy:
        found = self._parsed.get(spec)
        if found is None:
            found = self._parsed[spec] = self._parse(spec)
            if len(self._parsed) > self.max_cached:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(spec)
        return found

    def _parse(self, spec: str) -> Strategy:
        parts: list[tuple[Scorer, float]] = []
        names: list[str] = []
        for item in spec.split(","):
            name, _, weight_text = item.strip().partition(":")
            name = name.strip()
            if not name:
                raise UnknownStrategy(f"empty scorer name in routing strategy {spec!r}")
            try:
                weight = float(weight_text) if weight_text else 1.0
            except ValueError:
                raise UnknownStrategy(f"weight of {name!r} in {spec!r} is not a number") from None
            if weight < 0 or math.isnan(weight):
                raise UnknownStrategy(f"weight of {name!r} in {spec!r} must be >= 0")
            scorer = self.scorer(name)
            if weight > 0:
                parts.append((scorer, weight))
            names.append(f"{name}:{weight_text.strip()}" if weight_text else name)
        if not parts:
            raise UnknownStrategy(f"routing strategy {spec!r} has no scorer with a positive weight")
        pairing = next((scorer for scorer, _ in parts if isinstance(scorer, PdPairing)), None)
        return Strategy(",".join(names), tuple(parts), pairing)


def default_registry(env: RoutingEnv | None = None) -> StrategyRegistry:
    """A registry with every built-in strategy."""
    from brixmesh.router.routing.scorers import register_builtin

    registry = StrategyRegistry(env)
    register_builtin(registry)
    return registry
