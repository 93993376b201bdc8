"""Checks on a parsed frame that json.loads does not make: how deeply it nests, and whether
its strings are valid Unicode. Used by :meth:`protocol.connection.Connection.receive_data`,
which refuses a frame failing either as malformed (a typed ``invalid`` error, a
:class:`~protocol.events.ProtocolViolation`), before any of it reaches the application.
Pure functions, no I/O. Pinned by tests/protocol/test_fuzz.py.
"""

from __future__ import annotations

import json
from typing import Any


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests more than ``limit`` containers deep. Iterative
    and over containers only, so a frame of one large string (a chunk) costs two steps.
    Pinned by tests/protocol/test_fuzz.py::test_frames_nested_too_deeply_are_malformed_not_a_recursion_error
    and ::test_a_frame_may_nest_as_deep_as_real_traffic_does."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def may_hold_surrogates(data: str | bytes) -> bool:
    """A cheap test first (``isascii`` is O(1)): both ends send ASCII (``json.dumps``
    escapes the rest), where a lone surrogate can only be a ``\\udXXX`` escape; any other
    frame (non-ASCII text; bytes, which json.loads decodes with ``surrogatepass``, maybe
    as UTF-16) is checked in full."""
    if isinstance(data, bytes) or not data.isascii():
        return True
    # One memchr for a backslash first: a 3-character search over a 64 KiB chunk's base64
    # costs ~100 µs, the backslash ~1 µs (and base64 has none).
    return "\\" in data and ("\\ud" in data or "\\uD" in data)


def valid_unicode(value: Any) -> bool:
    """Whether every string in parsed JSON, keys included, can be encoded as UTF-8.
    ``"\\ud800"`` is valid JSON text but no valid Unicode string: untyped ``str`` fields
    (an image name in a result) would carry it to SQLite, which fails with an untyped
    UnicodeEncodeError. Pinned by
    tests/protocol/test_fuzz.py::test_a_lone_surrogate_is_malformed_and_never_reaches_the_application
    and ::test_any_frames_give_events_and_typed_errors_never_an_exception."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
