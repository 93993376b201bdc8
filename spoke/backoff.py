"""Reconnect delays: exponential with full jitter, reset after a healthy session.

Full jitter (a uniform draw below the exponential ceiling) keeps a fleet of spokes from
reconnecting in lock-step after a hub restart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    healthy_after_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    # After the hub's goodbye (``hub.goodbye``): come back within this many seconds, spread
    # evenly, and retry briskly while the hub restarts (for ``quick_for_s``), not
    # exponentially: a restarted hub has its fleet back in seconds, without a stampede.
    return_within_s: float | None = None
    quick_for_s: float = 60.0
    quick_until: float = 0.0

    def hub_said_goodbye(self, within_s: float, now: float) -> None:
        self.return_within_s = within_s
        self.quick_until = now + self.quick_for_s
        self.attempt = 0

    def next_delay(self, now: float | None = None) -> float:
        """The wait before the next attempt. Pinned by tests/test_backoff.py."""
        if self.return_within_s is not None:  # the first attempt after a goodbye
            within, self.return_within_s = self.return_within_s, None
            return self.rng.uniform(0.1, max(0.1, within))
        if now is not None and now < self.quick_until:
            return self.rng.uniform(0.5, 1.5)
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self.rng.uniform(self.base_s / 2, max(self.base_s / 2, ceiling))

    def session_ended(self, lasted_s: float) -> None:
        if lasted_s >= self.healthy_after_s:
            self.attempt = 0

    def connected(self) -> None:
        """Back in: brisk retries are over."""
        self.quick_until = 0.0
