"""Recent verb-call latency of one spoke link: a small bounded window per verb.

The Prometheus histogram (hub/metrics.py) answers "how were calls since the hub started",
in coarse buckets, for every spoke together. The dashboard asks something else: how is *this*
spoke answering *now*. So each :class:`~hub.spoke_link.SpokeLink` keeps, per verb, the last
:data:`MAX_SAMPLES` call durations of the last :data:`WINDOW_S` seconds. Verbs come from the
fixed verb table, so a window holds at most ``len(VERBS) * MAX_SAMPLES`` numbers: memory and
cardinality stay small however busy the spoke is. The history sampler (hub/history.py) reads
the same windows for the per-verb p50/p95/p99 series.

Pure: no I/O; the clock is injected. Pinned by tests/hub/test_fleet_memory.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

MAX_SAMPLES = 256  # per verb
WINDOW_S = 300.0  # what "recent" means for the spoke list


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by the nearest-rank rule (a value that was
    really observed, never an interpolation); 0.0 for no values. Pinned by
    tests/hub/test_fleet_memory.py::test_latency_window_is_bounded_and_recent."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class LatencyWindow:
    """Per-verb ``(when, seconds, ok)`` samples, bounded in count and age."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 max_samples: int = MAX_SAMPLES, window_s: float = WINDOW_S) -> None:
        self.clock, self.max_samples, self.window_s = clock, max_samples, window_s
        # Plain lists, trimmed as they pass twice the bound: a deque allocates a 64-slot block
        # up front (~600 B a verb), and a hub holding thousands of mostly idle links keeps a
        # window per link (issue 9: memory per connected spoke).
        self._samples: dict[str, list[tuple[float, float, bool]]] = {}

    def observe(self, verb: str, outcome: str, seconds: float) -> None:
        """The driver's call observer: one finished call (``outcome`` ``ok`` or an error code)."""
        samples = self._samples.get(verb)
        if samples is None:
            samples = self._samples[verb] = []
        samples.append((self.clock(), seconds, outcome == "ok"))
        if len(samples) > 2 * self.max_samples:
            del samples[: len(samples) - self.max_samples]

    def since(self, start: float) -> dict[str, list[float]]:
        """Durations of the calls that finished after ``start`` (on this window's clock), by
        verb: the sampler's input. Pinned by tests/hub/test_fleet_memory.py::
        test_the_sampler_writes_and_prunes."""
        out: dict[str, list[float]] = {}
        for verb, samples in self._samples.items():
            recent = [s for at, s, _ok in samples[-self.max_samples:] if at > start]
            if recent:
                out[verb] = recent
        return out

    def summary(self) -> dict[str, dict[str, float | int]]:
        """``{verb: {"count", "errors", "p50_ms", "p95_ms"}}`` over the last ``window_s``
        seconds (at most ``max_samples`` calls per verb); verbs without a recent call are left
        out. Pinned by tests/hub/test_fleet_memory.py::test_latency_window_is_bounded_and_recent."""
        start = self.clock() - self.window_s
        out: dict[str, dict[str, float | int]] = {}
        for verb in sorted(self._samples):
            recent = [(s, ok) for at, s, ok in self._samples[verb][-self.max_samples:] if at > start]
            if not recent:
                continue
            durations = [s for s, _ok in recent]
            out[verb] = {
                "count": len(recent),
                "errors": sum(1 for _s, ok in recent if not ok),
                "p50_ms": round(percentile(durations, 0.50) * 1000, 3),
                "p95_ms": round(percentile(durations, 0.95) * 1000, 3),
            }
        return out
