"""Which spoke releases a hub accepts, by the versions both announce in the handshake.

The rule, so that upgrades have one safe order (the hub first, then the spokes, at leisure):

- a spoke of a *newer* release series (``MAJOR.MINOR``) than the hub is refused: it may send
  verbs, fields or frames the older hub does not know;
- a spoke older than :data:`OLDEST_SPOKE_SERIES` is refused: the hub no longer speaks to it
  what it expects;
- anything in between is accepted (patch releases never change the wire).

A version that is not ``MAJOR.MINOR[.…]`` (a source tree without package metadata says
``0+unknown``; the in-memory tests say ``test``) is not judged: the protocol version
negotiation still guards the wire. Pure: no I/O. Pinned by tests/protocol/test_compat.py
and tests/hub/test_registry_memory.py::test_a_spoke_of_another_release_is_refused_naming_both.
"""

from __future__ import annotations

import re

OLDEST_SPOKE_SERIES = (0, 1)

_SERIES = re.compile(r"^(\d+)\.(\d+)(?:[.+\-a-z0-9]*)$", re.IGNORECASE)


def series(version: str) -> tuple[int, int] | None:
    """``(MAJOR, MINOR)`` of a version string, or None when it has no such shape."""
    match = _SERIES.match(version.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def spoke_refusal(hub_version: str, spoke_version: str) -> str | None:
    """Why a hub of ``hub_version`` must refuse a spoke of ``spoke_version``, naming both
    and what to do; None when it accepts it."""
    hub, spoke = series(hub_version), series(spoke_version)
    if hub is None or spoke is None:
        return None
    if spoke > hub:
        return (f"spoke version {spoke_version} is newer than the hub's {hub_version}: "
                f"upgrade the hub first (a hub accepts spokes of its own release series and "
                f"older, back to {_fmt(OLDEST_SPOKE_SERIES)})")
    if spoke < OLDEST_SPOKE_SERIES:
        return (f"spoke version {spoke_version} is too old for hub {hub_version} (the oldest "
                f"it accepts is {_fmt(OLDEST_SPOKE_SERIES)}): upgrade the spoke")
    return None


def _fmt(s: tuple[int, int]) -> str:
    return f"{s[0]}.{s[1]}"
