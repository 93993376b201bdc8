"""Typed error codes shared by hub and spoke.

Errors cross the wire as a JSON-RPC error object whose ``data.kind`` is one of
:class:`ErrorCode`. Callers branch on the kind, never on the message text: messages are
for humans and may change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    DENIED = "denied"
    BUSY = "busy"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


# JSON-RPC requires an integer code; the kind in ``data`` is what programs read.
_JSONRPC_CODES: dict[ErrorCode, int] = {
    ErrorCode.NOT_FOUND: -32004,
    ErrorCode.INVALID: -32602,
    ErrorCode.DENIED: -32003,
    ErrorCode.BUSY: -32005,
    ErrorCode.TIMEOUT: -32008,
    ErrorCode.CANCELLED: -32800,
    ErrorCode.UNAVAILABLE: -32010,
    ErrorCode.INTERNAL: -32603,
}

# HTTP status for each kind, so the hub's REST API and the SDK agree on one mapping.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INVALID: 400,
    ErrorCode.DENIED: 403,
    ErrorCode.BUSY: 429,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class RemoteError(Exception):
    """An error with a typed code; raised locally or rebuilt from a wire error object."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        return {
            "code": _JSONRPC_CODES[self.code],
            "message": self.message,
            "data": {"kind": self.code.value},
        }

    @classmethod
    def from_wire(cls, obj: Any) -> RemoteError:
        if not isinstance(obj, dict):
            return cls(ErrorCode.INTERNAL, f"malformed error object: {obj!r:.200}")
        data = obj.get("data")
        kind = data.get("kind") if isinstance(data, dict) else None
        try:
            code = ErrorCode(str(kind))
        except ValueError:
            code = ErrorCode.INTERNAL
        return cls(code, str(obj.get("message", "")))

    def __repr__(self) -> str:
        return f"RemoteError({self.code.value!r}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"
