"""Sizes and durations as people type them (``512m``, ``2g``; ``90s``, ``1h``, ``7d``).

The hub reads them from REST bodies, MCP tool arguments and ``hub serve`` flags, the spoke
from ``spoke join|run`` flags (``--max-memory``): one parser, here, so a size means the same
thing on both sides. Pure functions: no I/O.

Pinned by ``tests/protocol/test_units.py``; end to end by ``tests/test_boxes_e2e.py``
("bad size", "bad ttl" through the CLI).
"""

from __future__ import annotations

import re

from protocol.errors import ErrorCode, RemoteError

_SIZE_RE = re.compile(r"(\d+)([kmg]?)b?")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UnitError(RemoteError, ValueError):
    """A size or duration that does not parse.

    Both a :class:`RemoteError` with code ``invalid`` (what the hub's REST API and MCP tools
    turn into a 400 / a tool error) and a :class:`ValueError` (what the spoke's option
    parsing reports as a usage error), so each side handles it as it handles its other
    bad input. ``str()`` is the message alone, as for any ValueError."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID, message)

    def __str__(self) -> str:
        return self.message


def parse_size(value: object) -> int:
    """Bytes from ``512m`` / ``2g`` / ``64k`` / ``1024`` (binary units, optional ``b``,
    any case) or a positive int; :class:`UnitError` for anything else, zero included."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE_RE.fullmatch(str(value).strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise UnitError(f"bad size {value!r} (use e.g. 512m, 2g)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_ttl(value: object) -> float:
    """Seconds from ``90s`` / ``30m`` / ``1h`` / ``7d`` / ``45`` or a positive number;
    :class:`UnitError` for anything else, zero included."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _TTL_RE.match(str(value))
    if not match or int(match.group(1)) <= 0:
        raise UnitError(f"bad ttl {value!r} (use e.g. 90s, 30m, 1h, 7d)")
    return float(int(match.group(1)) * _TTL_UNITS[match.group(2)])
