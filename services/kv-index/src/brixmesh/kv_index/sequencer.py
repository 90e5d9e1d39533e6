"""Per-engine sequence tracking: is this ZMQ message next, late, after a gap, or from a restarted engine?

vLLM numbers its event batches 0, 1, 2, ... per publisher; a restarted engine starts again at 0. A message
with a seq below the next expected one is either a late duplicate (reordered, or queued on our socket while a
replay already delivered it; its engine time is not newer than what was applied) or the first we see from a
restarted engine (newer engine time; its first batches may have gone out before our socket reconnected).
Seq alone cannot tell: a replayed seq 0 followed by the same seq 0 from the socket is no restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["apply", "gap", "stale", "restart"]


@dataclass(slots=True)
class SeqTracker:
    next_seq: int | None = None
    """The seq expected next; None until the first message (then everything before it is missing)."""
    last_ts: float = float("-inf")
    """Engine time of the newest batch applied."""

    def classify(self, seq: int, ts: float = float("-inf")) -> Verdict:
        """``apply``: in order. ``gap``: seqs ``missing_from(seq)`` ... ``seq - 1`` must be replayed first.
        ``stale``: already applied, drop. ``restart``: the engine restarted; its state must be cleared and
        seqs 0 ... ``seq - 1`` replayed."""
        expected = self.next_seq
        if expected is None:
            return "apply" if seq == 0 else "gap"
        if seq == expected:
            return "apply"
        if seq > expected:
            return "gap"
        if ts > self.last_ts:
            return "restart"
        return "stale"

    def missing_from(self) -> int:
        return 0 if self.next_seq is None else self.next_seq

    def applied(self, seq: int, ts: float = float("-inf")) -> None:
        self.next_seq = seq + 1
        if ts > self.last_ts:
            self.last_ts = ts

    def reset(self) -> None:
        self.next_seq = None
        self.last_ts = float("-inf")
