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

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self.rng.uniform(self.base_s / 2, max(self.base_s / 2, ceiling))

    def session_ended(self, lasted_s: float) -> None:
        if lasted_s >= self.healthy_after_s:
            self.attempt = 0
