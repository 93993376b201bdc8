"""Certificate pins: the SHA-256 of a TLS certificate's DER bytes, as ``sha256:<hex>``.

Every client of the hub pins its certificate the same way: spokes
(:mod:`spoke.connector`), the CLI and SDK (:mod:`client.http_client`,
:mod:`client.fast_exec`) and the MCP stdio bridge. A module of its own, on :mod:`hashlib`
and :mod:`hmac` only, because ``hub box exec`` checks a pin on every run and must not pay
for what :mod:`protocol.tokens` imports (its dataclass alone costs ~8 ms); that module
re-exports both names. Pure functions: no I/O.

Pinned by ``tests/protocol/test_tokens.py`` (format, case, constant-time comparison) and
``tests/test_client_errors.py`` (every client refuses a wrong pin before sending).
"""

from __future__ import annotations

import hashlib
import hmac


def cert_pin(der: bytes) -> str:
    """The pin of the certificate whose DER encoding is ``der``."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def pins_match(expected: str, der: bytes) -> bool:
    """Whether ``der`` is the pinned certificate (hex case ignored, compared in constant
    time; a malformed or empty pin is a mismatch, never an exception)."""
    # bytes: compare_digest raises TypeError on non-ASCII str, and a bad pin is a mismatch
    return hmac.compare_digest(expected.lower().encode(), cert_pin(der).encode())
