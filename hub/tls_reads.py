"""Per-connection TLS read size: small for idle connections, large while bulk data flows.

hub/conn_limits.py shrinks asyncio's TLS read buffer to one record (16.5 KiB instead of
256 KiB) for every connection, so that 1000 idle spokes fit in 150 MB (issue 9). A
connection carrying bulk data (an upload's body, a spoke's exec output or download) then
costs one socket read, one ``data_received`` and one wake-up of the reading task per 16 KiB:
~3200 of each per 50 MiB. :func:`widen` gives one connection the stdlib's 256 KiB for the
transfer (one read takes all a 1 MiB client write left in the socket), :func:`narrow` gives
the memory back afterwards (issue 14: ~25 % of the hub's CPU for ``box cp`` in).

asyncio's ``SSLProtocol`` reads ``max_size`` at each read and only ever grows its buffer, so
setting it on the instance between reads is safe; the attributes are private, so anything
else (another event loop, a plain TCP transport) is left alone. Pinned by
tests/hub/test_tls_reads.py and tests/test_bulk_data.py (transfers stay byte-exact).
"""

from __future__ import annotations

from typing import Any

BULK_READ_BUFFER = 256 * 1024  # asyncio's own default: one read per 256 KiB


def _ssl_protocol(transport: Any) -> Any | None:
    proto = getattr(transport, "_ssl_protocol", None)
    if proto is None or not hasattr(proto, "_ssl_buffer") or not hasattr(proto, "max_size"):
        return None
    return proto


def widen(transport: Any) -> None:
    """Read up to :data:`BULK_READ_BUFFER` at a time on this TLS connection (a no-op if it
    is not one of asyncio's)."""
    proto = _ssl_protocol(transport)
    if proto is not None:
        proto.max_size = BULK_READ_BUFFER


def narrow(transport: Any) -> None:
    """Back to the class's read size (one TLS record, hub/conn_limits.py), and the large
    buffer freed."""
    proto = _ssl_protocol(transport)
    if proto is None or "max_size" not in vars(proto):
        return
    del proto.max_size  # the class attribute again
    if len(proto._ssl_buffer) > proto.max_size:
        proto._ssl_buffer = bytearray(proto.max_size)
        proto._ssl_buffer_view = memoryview(proto._ssl_buffer)
