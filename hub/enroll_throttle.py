"""Rejected spoke handshakes, throttled per address and folded in the audit log.

A spoke connection that fails its proof (an unknown or used join token, a bad signature, an
unknown identity) costs the hub a database lookup, a signature check and an audit row; a
brute-force client used to get a thousand of each in 1.5 s. :class:`RejectionThrottle`
counts rejections per remote address in a window: past ``max_rejections`` the address is
turned away at once, before any check, with a close code that says "later"
(:data:`protocol.messages.CLOSE_THROTTLED`), so a real spoke behind that address backs off
and comes back rather than stopping.

The audit log stays readable: the first rejection from an address in a window is written
as it happens; the rest of that window (rejected or turned away) become one summary row
with their count when the window ends (:meth:`RejectionThrottle.summaries`, flushed by the
registry every window). Rows stay append-only. ``clock`` is injected (monotonic seconds).
Pinned by tests/hub/test_registry_memory.py::test_rejected_handshakes_are_throttled_and_folded
and tests/test_enrollment.py::test_enrollment_brute_force_is_throttled_and_folded.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    started: float
    rejected: int = 0  # rejections counted in this window (the first one included)
    folded: int = 0  # attempts after the first one: rejected, or turned away
    last_reason: str = ""


@dataclass(frozen=True)
class Folded:
    """One summary row: ``count`` more attempts from ``remote`` in a window, not written
    one by one."""

    remote: str
    count: int
    last_reason: str
    window_s: float


class RejectionThrottle:
    def __init__(self, max_rejections: int = 10, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_addresses: int = 10_000) -> None:
        self.max_rejections, self.window_s, self.clock = max_rejections, window_s, clock
        self.max_addresses = max_addresses
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._ended: list[Folded] = []

    def _window(self, remote: str, now: float) -> _Window | None:
        window = self._windows.get(remote)
        if window is not None and now - window.started >= self.window_s:
            self._close(remote, window)
            window = None
        return window

    def _close(self, remote: str, window: _Window) -> None:
        del self._windows[remote]
        if window.folded:
            self._ended.append(Folded(remote, window.folded, window.last_reason, self.window_s))

    def retry_after(self, remote: str) -> float:
        """Seconds ``remote`` must wait before its next attempt is checked (0: now). A
        refused attempt is folded into the window's summary."""
        now = self.clock()
        window = self._window(remote, now)
        if window is None or window.rejected < self.max_rejections:
            return 0.0
        window.folded += 1
        window.last_reason = "turned away: too many rejected attempts"
        return max(0.0, window.started + self.window_s - now)

    def rejected(self, remote: str, reason: str) -> bool:
        """Count one rejection; True when it should be written to the audit log now (the
        first of its window), False when it is folded into the window's summary."""
        now = self.clock()
        window = self._window(remote, now)
        if window is None:
            self._windows[remote] = _Window(started=now, rejected=1, last_reason=reason)
            while len(self._windows) > self.max_addresses:
                oldest, ended = next(iter(self._windows.items()))
                self._close(oldest, ended)
            return True
        window.rejected += 1
        window.folded += 1
        window.last_reason = reason
        return False

    def summaries(self, *, everything: bool = False) -> list[Folded]:
        """The summaries of windows that have ended (each returned once); with
        ``everything``, of the open ones too (the hub is stopping)."""
        now = self.clock()
        for remote, window in list(self._windows.items()):
            if everything or now - window.started >= self.window_s:
                self._close(remote, window)
        ended, self._ended = self._ended, []
        return ended
