"""The cheapest mix of GPU types that serves the live traffic within the SLO (Melange-style).

An integer program solved by HiGHS: integer replicas ``y_g`` per GPU type minimise ``sum cost_g * y_g``
subject to

- every bucket's load is served: ``sum_g x_bg = 1`` (``x_bg`` is the share of bucket ``b``'s requests sent to
  type ``g``; a bucket may be split across types),
- no type is loaded past its profiled capacity: ``sum_b rate_b * x_bg / capacity_bg <= y_g`` (a replica of
  ``g`` serves ``capacity_bg`` requests/s of bucket ``b`` within the SLO, so each request of ``b`` uses
  ``1 / capacity_bg`` of one replica),
- ``min_g <= y_g <= max_g``.

Pure: no I/O. :class:`Infeasible` says in one line why no plan exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import highspy

from brixmesh.common.messages import GpuProfile
from brixmesh.common.shapes import bucket_tokens

Cell = tuple[int, int]


class Infeasible(Exception):
    """No mix of the GPU types serves the load within the SLO and the replica bounds."""


@dataclass(frozen=True, slots=True)
class GpuOption:
    gpu: str
    cost_per_hour: float
    capacity: Mapping[Cell, float]
    """Profiled requests/s of one replica per (input bucket, output bucket) within the SLO."""
    min_replicas: int = 0
    max_replicas: int = 64


@dataclass(frozen=True, slots=True)
class Plan:
    replicas: dict[str, int]
    cost_per_hour: float
    routing: dict[Cell, dict[str, float]] = field(default_factory=dict)
    """Requests/s of each bucket the plan sends to each GPU type."""

    def describe(self) -> str:
        mix = " + ".join(f"{n}x{gpu}" for gpu, n in sorted(self.replicas.items()) if n) or "nothing"
        return f"{mix} at {self.cost_per_hour:.2f}/h"


def capacity_from_profile(profile: GpuProfile) -> dict[Cell, float]:
    return {(c.input_bucket, c.output_bucket): c.max_rate for c in profile.cells}


def capacity_for(capacity: Mapping[Cell, float], cell: Cell) -> float:
    """Capacity for traffic in ``cell`` from the profiled cells that are at least as long in both lengths
    (a longer request never takes less of a replica); the best of those, 0 when none covers ``cell``."""
    covering = [rate for (i, o), rate in capacity.items() if i >= cell[0] and o >= cell[1]]
    return max(covering, default=0.0)


def _cell_name(cell: Cell) -> str:
    return f"(in<={bucket_tokens(cell[0])}, out<={bucket_tokens(cell[1])})"


def solve(load: Mapping[Cell, float], options: Sequence[GpuOption], *, time_limit_s: float = 1.0) -> Plan:
    """The cheapest plan for ``load`` (requests/s per cell); raises :class:`Infeasible` with the reason."""
    if not options:
        raise Infeasible("no GPU type to plan with")
    cells = sorted(cell for cell, rate in load.items() if rate > 0)
    caps = {(cell, o.gpu): capacity_for(o.capacity, cell) for cell in cells for o in options}
    for cell in cells:
        if all(caps[cell, o.gpu] <= 0 for o in options):
            raise Infeasible(f"no GPU type meets the SLO for bucket {_cell_name(cell)} (no profile covers it "
                             f"or its profiled rate is 0)")
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("time_limit", time_limit_s)
    replicas = {o.gpu: highs.addIntegral(lb=o.min_replicas, ub=o.max_replicas) for o in options}
    share = {key: highs.addVariable(lb=0, ub=1) for key, cap in caps.items() if cap > 0}
    for cell in cells:
        highs.addConstr(sum(share[cell, o.gpu] for o in options if (cell, o.gpu) in share) == 1)
    for o in options:
        used = [load[cell] / caps[cell, o.gpu] * share[cell, o.gpu]
                for cell in cells if (cell, o.gpu) in share]
        if used:
            highs.addConstr(sum(used) <= replicas[o.gpu])
    highs.minimize(sum(o.cost_per_hour * replicas[o.gpu] for o in options))
    status = highs.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal and status != highspy.HighsModelStatus.kInfeasible:
        raise Infeasible(f"solver stopped without a plan: {highs.modelStatusToString(status)}")
    if status == highspy.HighsModelStatus.kInfeasible:
        needed = {o.gpu: math.ceil(sum(load[c] / caps[c, o.gpu] for c in cells if caps[c, o.gpu] > 0))
                  for o in options}
        alone = ", ".join(f"{g} {n}" for g, n in needed.items())
        raise Infeasible(f"the load needs more replicas than max_replicas allows (one type alone would need "
                         f"{alone})")
    counts = {o.gpu: round(highs.val(replicas[o.gpu])) for o in options}
    routing = {
        cell: {o.gpu: load[cell] * highs.val(share[cell, o.gpu]) for o in options
               if (cell, o.gpu) in share and highs.val(share[cell, o.gpu]) > 1e-9}
        for cell in cells
    }  # fmt: skip
    cost = sum(o.cost_per_hour * counts[o.gpu] for o in options)
    return Plan(counts, cost, routing)
