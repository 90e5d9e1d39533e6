"""From signals to verdicts, debounced. Pure: the caller passes the time.

- An *episode* is a signal (kind, GPU, pod, Xid code) seen at successive polls, missing from at most
  ``gap_polls`` polls in a row (polls, not seconds: a slow poll does not split an episode); it yields at
  most one verdict, once the signal held for its rule's ``hold_s`` (scaled by
  ``hold_scale``). A signal that flaps faster than its hold never acts.
- A *target* is the GPU (or, unknown GPU, the pod) a verdict acts on. After an action on a target, an action
  of the same or lower rank on it within ``cooldown_s`` is held back (published as ``observe`` with the
  reason): a flapping fault does not replace pod after pod.
- A ``restart_engine`` on a target restarted ``restarts_before_replace`` times within ``cooldown_s`` is
  escalated to ``replace_pod``: a restart that does not cure it means the GPU is suspect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brixmesh.common.messages import GpuAction

from brixmesh.gpu_doctor.catalogue import ACTION_RANK, Rule, rule_for
from brixmesh.gpu_doctor.signals import Signal


@dataclass
class Episode:
    first_seen: float
    last_seen: float
    last_poll: int
    count: int = 0
    decided: bool = False


@dataclass(frozen=True)
class Verdict:
    signal: Signal
    rule: Rule
    action: GpuAction
    reason: str
    first_seen: float
    count: int
    held_back: bool = False


@dataclass
class TargetHistory:
    actions: list[tuple[float, GpuAction]] = field(default_factory=list)


class Policy:
    def __init__(
        self,
        *,
        cooldown_s: float = 300.0,
        gap_polls: int = 2,
        hold_scale: float = 1.0,
        restarts_before_replace: int = 1,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.gap_polls = gap_polls
        self._polls = 0
        self.hold_scale = hold_scale
        self.restarts_before_replace = restarts_before_replace
        self._episodes: dict[tuple[str, str, str, float], Episode] = {}
        self._targets: dict[str, TargetHistory] = {}

    def evaluate(self, signals: list[Signal], now: float) -> list[Verdict]:
        """Judge one poll's signals (call once per poll, also with none: that is how episodes end)."""
        self._polls += 1
        verdicts = []
        for signal in signals:
            rule = rule_for(signal.kind, signal.value)
            if rule is None or signal.value < rule.threshold:
                continue
            episode = self._episode(signal, now)
            if episode.decided or now - episode.first_seen < rule.hold_s * self.hold_scale:
                continue
            episode.decided = True
            verdicts.append(self._verdict(signal, rule, episode, now))
        self._forget(now)
        return verdicts

    def _episode(self, signal: Signal, now: float) -> Episode:
        code = signal.value if signal.kind == "xid" else 0.0
        key = (signal.kind, signal.gpu, signal.pod, code)
        episode = self._episodes.get(key)
        if episode is None or self._polls - episode.last_poll > self.gap_polls + 1:
            episode = self._episodes[key] = Episode(first_seen=now, last_seen=now, last_poll=self._polls)
        episode.last_seen, episode.last_poll = now, self._polls
        episode.count += 1
        return episode

    def _verdict(self, signal: Signal, rule: Rule, episode: Episode, now: float) -> Verdict:
        target = f"gpu:{signal.gpu}" if signal.gpu else f"pod:{signal.pod}"
        history = self._targets.setdefault(target, TargetHistory())
        recent = [(at, action) for at, action in history.actions if now - at <= self.cooldown_s]
        action, reason = rule.action, rule.meaning
        restarts = sum(taken == "restart_engine" for _, taken in recent)
        if action == "restart_engine" and restarts >= self.restarts_before_replace:
            action = "replace_pod"
            reason += f"; escalated: restarted {restarts} times in {self.cooldown_s:g} s without a cure"
        if action != "observe":
            blocking = [(at, taken) for at, taken in recent if ACTION_RANK[taken] >= ACTION_RANK[action]]
            if blocking:
                at, taken = blocking[-1]
                kind = target.split(":")[0]
                reason += f"; held back: {taken} of this {kind} {now - at:.0f} s ago (debounce)"
                return Verdict(
                    signal, rule, "observe", reason, episode.first_seen, episode.count, held_back=True
                )
            history.actions = [*recent, (now, action)]
        return Verdict(signal, rule, action, reason, episode.first_seen, episode.count)

    def _forget(self, now: float) -> None:
        """Episodes and histories that can no longer matter (memory stays bounded by live signals)."""
        stale = [k for k, e in self._episodes.items() if self._polls - e.last_poll > self.gap_polls + 1]
        for key in stale:
            del self._episodes[key]
        idle = [k for k, h in self._targets.items() if all(now - at > self.cooldown_s for at, _ in h.actions)]
        for key in idle:
            del self._targets[key]
