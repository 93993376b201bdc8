"""When an alert is due: the four rules, their "for" times, cooldowns and the startup grace.

Pure and clock-driven, so every timing is tested without waiting: the service
(hub/alerts/service.py) tells :class:`AlertRules` what it saw (a spoke lost, how many spokes
are connected and enrolled, the queue depth, per-verb call outcomes) and asks :meth:`due`
once a second what to fire. Nothing here sends, records or sleeps.

Why the rules look as they do:

- *spoke lost* waits ``for`` (default 5 s) before firing, so a spoke that drops and is back
  within seconds (a network blip) is not an alert, and still fires well inside 30 s of a
  death (the hub sees a crash at once, and a silent spoke ~11 s after its last heartbeat).
  Spokes lost in the same second are one alert naming each of them: a partition of 500
  spokes is one message, not 500.
- After a hub (re)start every spoke must reconnect, so for ``startup_grace`` (default 90 s)
  nothing lost is reported. Spokes that were connected to the hub before it restarted (and
  those lost during the grace) are reported when the grace ends if they have not come back:
  the grace delays "lost", it never hides it. ``startup_grace = "0s"`` turns it off.
- *no spoke connected* and *queue depth* fire once per episode (the condition held for
  ``for``), and again only after the condition cleared and held again, past the cooldown.
- *verb error rate* compares cumulative per-verb counts (what the Prometheus counter of
  calls holds) with the snapshot from ``window`` ago: no per-call bookkeeping here.

Pinned by tests/hub/test_alerts_rules.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.alerts.config import AlertsConfig

MAX_NAMED = 20  # spokes named in one alert's text; the rest are counted


@dataclass(frozen=True)
class Alert:
    """One alert to send: ``rule`` (one of :data:`hub.alerts.config.RULES`), ``subject``
    (what it is about: spoke names, ``queue``, a verb, ``hub``), one line of ``text`` for
    people, the ``spokes`` it names, and ``details`` for machines (the webhook's fields)."""

    rule: str
    subject: str
    text: str
    spokes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Episode:
    """A condition that holds since ``since``; ``fired`` once it has been reported."""

    since: float
    fired: bool = False


class AlertRules:
    """The rule state of one hub. ``clock`` is monotonic seconds; ``is_live(name)`` says
    whether a spoke is connected now (the registry's answer)."""

    def __init__(self, config: AlertsConfig, clock: Callable[[], float],
                 is_live: Callable[[str], bool]) -> None:
        self.config, self.clock, self.is_live = config, clock, is_live
        self.started_at = clock()
        self._lost: dict[str, tuple[float, str]] = {}  # spoke -> (lost at, why)
        self._fired_at: dict[tuple[str, str], float] = {}  # (rule, subject) -> when
        self._no_spoke: _Episode | None = None
        self._queue: _Episode | None = None
        self._queue_depth = 0
        self._calls: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()
        self._verb_episodes: dict[str, _Episode] = {}

    @property
    def grace_ends(self) -> float:
        return self.started_at + self.config.startup_grace_s

    def pending_lost(self) -> list[str]:
        """The spokes seen lost whose alert is not due yet (waiting for "for" or the grace)."""
        return sorted(self._lost)

    # ----------------------------------------------------------- observations
    def spoke_lost(self, name: str, why: str) -> None:
        """A connected spoke went without a goodbye. Pinned by
        tests/hub/test_alerts_rules.py::test_a_lost_spoke_fires_after_for_unless_it_came_back."""
        if self.config.spoke_lost.enabled:
            self._lost[name] = (self.clock(), why)

    def restarted_with(self, names: list[str]) -> None:
        """The spokes that were connected when the hub last stopped: lost if they are not
        back by the end of the startup grace (not at all without a grace: a spoke cannot
        reconnect in no time). Pinned by tests/hub/test_alerts_rules.py::
        test_startup_grace_holds_lost_alerts_until_it_ends."""
        if self.config.startup_grace_s > 0:
            for name in names:
                self._lost.setdefault(name, (self.clock(), "did not come back after the hub restarted"))

    def observe_spokes(self, connected: int, enrolled: int) -> None:
        """How many spokes are connected, and how many are enrolled (not revoked): a hub no
        spoke has ever joined is not missing one."""
        if connected > 0 or enrolled == 0:
            self._no_spoke = None
        elif self._no_spoke is None:
            self._no_spoke = _Episode(self.clock())

    def observe_queue(self, depth: int) -> None:
        self._queue_depth = depth
        if depth <= self.config.queue_depth.above:
            self._queue = None
        elif self._queue is None:
            self._queue = _Episode(self.clock())

    def observe_calls(self, totals: Mapping[str, Mapping[str, float]]) -> None:
        """Cumulative call counts ``{verb: {outcome: count}}`` (they only grow, as the
        counter's do). Pinned by tests/hub/test_alerts_rules.py::
        test_verb_error_rate_over_a_window_with_a_minimum_of_calls."""
        rule = self.config.verb_error_rate
        if not rule.enabled:
            return
        now = self.clock()
        snapshot = {verb: (int(sum(counts.values())),
                           int(sum(n for o, n in counts.items() if o in rule.outcomes)))
                    for verb, counts in totals.items()}
        self._calls.append((now, snapshot))
        # Keep one snapshot at or before the window's start: the baseline.
        while len(self._calls) > 1 and self._calls[1][0] <= now - rule.window_s:
            self._calls.popleft()

    # ------------------------------------------------------------------ due
    def _cooled(self, rule: str, subject: str, cooldown_s: float) -> bool:
        """True (and remembered as fired now) unless ``rule`` fired for ``subject`` within
        its cooldown."""
        now = self.clock()
        last = self._fired_at.get((rule, subject))
        if last is not None and now - last < cooldown_s:
            return False
        self._fired_at[(rule, subject)] = now
        return True

    def due(self) -> list[Alert]:
        """The alerts to fire now (each at most once). Pinned by tests/hub/test_alerts_rules.py."""
        out: list[Alert] = []
        lost = self._due_lost()
        if lost is not None:
            out.append(lost)
        out += self._due_episode_rules()
        out += self._due_verbs()
        return out

    def _due_lost(self) -> Alert | None:
        rule, now = self.config.spoke_lost, self.clock()
        ready: list[tuple[str, str]] = []
        for name, (since, why) in list(self._lost.items()):
            if self.is_live(name):
                del self._lost[name]
            elif now >= max(since + rule.for_s, self.grace_ends):
                del self._lost[name]
                if self._cooled("spoke_lost", name, rule.cooldown_s):
                    ready.append((name, why))
        if not ready:
            return None
        names = tuple(sorted(name for name, _ in ready))
        whys = dict(ready)
        if len(ready) == 1:
            text = f"spoke {names[0]!r} lost: {whys[names[0]] or 'no goodbye'}"
        else:
            shown = ", ".join(f"{n} ({whys[n] or 'no goodbye'})" for n in names[:MAX_NAMED])
            more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
            text = f"{len(names)} spokes lost: {shown}{more}"
        return Alert("spoke_lost", ", ".join(names[:MAX_NAMED]), text, names,
                     {"reasons": {n: whys[n] for n in names}})

    def _due_episode_rules(self) -> list[Alert]:
        out: list[Alert] = []
        now = self.clock()
        none_rule, queue_rule = self.config.no_spoke_connected, self.config.queue_depth
        ep = self._no_spoke
        if (none_rule.enabled and ep is not None and not ep.fired
                and now >= max(ep.since + none_rule.for_s, self.grace_ends)):
            ep.fired = True
            if self._cooled("no_spoke_connected", "hub", none_rule.cooldown_s):
                out.append(Alert("no_spoke_connected", "hub",
                                 f"no spoke connected for {now - ep.since:.0f} s",
                                 details={"for_s": round(now - ep.since, 1)}))
        ep = self._queue
        if (queue_rule.enabled and ep is not None and not ep.fired
                and now >= ep.since + queue_rule.for_s):
            ep.fired = True
            if self._cooled("queue_depth", "queue", queue_rule.cooldown_s):
                out.append(Alert("queue_depth", "queue",
                                 f"{self._queue_depth} workstreams queued (above "
                                 f"{queue_rule.above} for {now - ep.since:.0f} s)",
                                 details={"depth": self._queue_depth, "above": queue_rule.above,
                                          "for_s": round(now - ep.since, 1)}))
        return out

    def _due_verbs(self) -> list[Alert]:
        rule = self.config.verb_error_rate
        if not rule.enabled or len(self._calls) < 2:
            return []
        now = self.clock()
        (_t0, base), (_t1, last) = self._calls[0], self._calls[-1]
        out: list[Alert] = []
        for verb in sorted(last):
            calls = last[verb][0] - base.get(verb, (0, 0))[0]
            errors = last[verb][1] - base.get(verb, (0, 0))[1]
            if calls < rule.min_calls or errors / calls <= rule.above:
                self._verb_episodes.pop(verb, None)
                continue
            ep = self._verb_episodes.setdefault(verb, _Episode(now))
            if ep.fired:
                continue
            ep.fired = True
            if self._cooled("verb_error_rate", verb, rule.cooldown_s):
                rate = errors / calls
                out.append(Alert("verb_error_rate", verb,
                                 f"{verb}: {errors} of {calls} calls failed ({rate:.0%}, above "
                                 f"{rule.above:.0%}) in the last {rule.window_s:.0f} s",
                                 details={"verb": verb, "calls": calls, "errors": errors,
                                          "rate": round(rate, 4), "above": rule.above,
                                          "window_s": rule.window_s,
                                          "outcomes": list(rule.outcomes)}))
        return out
