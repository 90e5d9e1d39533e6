"""Per-engine sequence tracking: is this ZMQ message next, late, after a gap, or from a restarted engine?

vLLM numbers its event batches 0, 1, 2, ... per publisher; a restarted engine starts again at 0. A message
older than the last one applied is a late duplicate (e.g. reordered and already recovered by replay) unless
it is far behind or 0, which means the engine restarted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How far behind the last applied seq a message may be and still count as late rather than a restart.
REORDER_WINDOW = 64

Verdict = Literal["apply", "gap", "stale", "restart"]


@dataclass(slots=True)
class SeqTracker:
    next_seq: int | None = None
    """The seq expected next; None until the first message (then everything before it is missing)."""

    def classify(self, seq: int) -> Verdict:
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
        if seq == 0 or seq + REORDER_WINDOW < expected:
            return "restart"
        return "stale"

    def missing_from(self) -> int:
        return 0 if self.next_seq is None else self.next_seq

    def applied(self, seq: int) -> None:
        self.next_seq = seq + 1

    def reset(self) -> None:
        self.next_seq = None
