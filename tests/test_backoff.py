"""spoke/backoff.py: exponential with full jitter normally; after the hub's goodbye, back
within the spread it asked for, then brisk retries while it restarts."""

from __future__ import annotations

import random

from spoke.backoff import Backoff


def test_exponential_with_full_jitter_and_a_reset_after_a_healthy_session() -> None:
    backoff = Backoff(rng=random.Random(7))
    delays = [backoff.next_delay(0.0) for _ in range(8)]
    ceilings = [min(30.0, 0.5 * 2**i) for i in range(8)]
    assert all(0.25 <= d <= max(0.25, c) for d, c in zip(delays, ceilings, strict=True))
    assert max(delays[5:]) > 2.0, "it really backs off"
    backoff.session_ended(lasted_s=60)
    assert backoff.next_delay(0.0) <= 0.5


def test_after_a_goodbye_the_fleet_returns_within_the_spread_then_retries_briskly() -> None:
    rng = random.Random(1)
    firsts = []
    for _ in range(200):
        backoff = Backoff(rng=rng)
        backoff.attempt = 9  # a long outage before: it would wait up to 30 s
        backoff.hub_said_goodbye(2.5, now=100.0)
        firsts.append(backoff.next_delay(100.0))
        assert all(0.5 <= backoff.next_delay(100.0 + i) <= 1.5 for i in range(5)), "brisk"
        assert backoff.next_delay(100.0 + 61) <= 30.0  # past the quick window: backoff again
    assert all(0.1 <= d <= 2.5 for d in firsts)
    assert max(firsts) - min(firsts) > 2.0, "spread over the window, not in lock-step"
    backoff = Backoff(rng=rng)
    backoff.hub_said_goodbye(2.5, now=0.0)
    backoff.connected()
    backoff.next_delay(0.0)
    assert backoff.next_delay(1.0) <= 0.5, "once back, normal backoff from the start"
