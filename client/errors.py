"""The hub's HTTP error responses, decoded in one place for every client in this package.

The hub answers a failed request with the HTTP status of its typed code
(:data:`protocol.errors.HTTP_STATUS`) and a body ``{"error": {"code", "message"}}``; the
synchronous client (:mod:`client.http_client`, and its one-shot exec in
:mod:`client.fast_exec`) and the asyncio SDK (:mod:`client.async_client`) all turn that into
the same :class:`ApiError`, so a caller branches on ``err.code`` whichever client it uses.
Standard library only: the CLI's fast path imports it.

Pinned by ``tests/test_client_errors.py`` (every client against the same answers); end to
end by ``tests/test_admin_cli.py`` (a revoked key's 401) and ``tests/test_workstreams_e2e.py``.
"""

from __future__ import annotations

import json

from protocol.errors import ErrorCode, RemoteError


class ApiError(RemoteError):
    """A typed error the hub answered with, and the HTTP status it came with."""

    def __init__(self, code: ErrorCode | str, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


def api_error(status: int, body: bytes, reason: str = "") -> ApiError:
    """The :class:`ApiError` an error response (``status`` >= 400, ``body``) stands for.

    A code this client does not know becomes ``internal`` with the hub's message; a body
    that is not the hub's error document (a proxy's HTML page, say) becomes ``internal``
    with the status and the start of the body. ``reason`` (the HTTP reason phrase) stands
    in for a missing message."""
    try:
        error = json.loads(body)["error"]
        code, message = error.get("code", "internal"), error.get("message", reason)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiError(ErrorCode.INTERNAL, f"HTTP {status}: {body[:200]!r}", status)
    try:
        kind = ErrorCode(str(code))
    except ValueError:
        kind = ErrorCode.INTERNAL
    return ApiError(kind, str(message), status)
