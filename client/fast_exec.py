"""``hub box exec``'s one HTTP exchange, written by hand on a plain socket. Why it exists:

``hub box exec ID -- CMD`` is meant to cost about as much as ``docker exec``, and importing
:mod:`http.client` (which drags in the :mod:`email` package) costs about as much as the rest
of the command's start-up, ~10 ms. So this module speaks the single request that command
makes — one POST, a streamed answer (binary frames, :mod:`protocol.binary_exec`, or NDJSON
from an older hub), ``Connection: close`` — on the standard library's
:mod:`socket` and :mod:`ssl` only, and nothing else should use it: it is not a general HTTP
client (no redirects, no informational responses, no compression; it asks for identity).
Repeated calls belong on :meth:`client.http_client.HubClient.exec_stream`, which keeps its
connection alive instead of paying a TLS handshake per call.

It pins the hub's certificate exactly as the rest of the client does (before the request,
and the API key in it, is sent), and reports errors as the same :class:`client.errors.ApiError`.

Pinned by ``tests/test_exec_fast_paths.py`` (the response reader, the import budget),
``tests/test_client_errors.py`` (errors and the pin, as the other clients) and, end to end,
``tests/test_boxes_e2e.py`` and ``tests/test_tls_proxy.py`` (``hub box exec`` against a pinned
hub and behind a CA-trusted proxy); ``benchmarks/exec_overhead.py`` measures it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from client.errors import api_error
from client.exec_events import ACCEPT, from_binary, is_binary
from protocol.errors import ErrorCode, RemoteError

if TYPE_CHECKING:
    from client.http_client import HubClient

MAX_LINE = 65536  # longest status or header line accepted from the hub


def exec_once(
    client: HubClient,
    box_id: str,
    cmd: list[str],
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    workdir: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The events of ``POST /api/boxes/ID/exec`` (see ``HubClient.exec_stream``), on a
    connection of ``client``'s hub opened for this call and closed after it."""
    body = json.dumps(
        {"cmd": cmd, "timeout_s": timeout_s, "env": env or {}, "workdir": workdir}
    ).encode()
    host = client._host if ":" not in client._host else f"[{client._host}]"
    default_port = 443 if client._https else 80
    head = (
        f"POST /api/boxes/{quote(box_id)}/exec HTTP/1.1\r\n"
        f"Host: {host}{'' if client._port == default_port else f':{client._port}'}\r\n"
        f"Authorization: Bearer {client.api_key}\r\n"
        "Content-Type: application/json\r\n"
        f"Accept: {ACCEPT}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Accept-Encoding: identity\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    sock = open_socket(client)
    try:
        sock.sendall(head + body)  # one write: no Nagle / delayed-ACK stall
        with sock.makefile("rb") as reader:
            status, headers, body_chunks = read_response_headers(reader)
            if status >= 400:
                raise api_error(status, b"".join(body_chunks))
            if is_binary(headers.get(b"content-type", b"").decode("latin-1")):
                yield from from_binary(body_chunks)
                return
            pending = b""
            for piece in body_chunks:
                pending += piece
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)
    finally:
        sock.close()


def open_socket(client: HubClient) -> socket.socket:
    """A new connection to ``client``'s hub, TLS-wrapped and pin-checked when https."""
    try:
        sock = socket.create_connection((client._host, client._port), timeout=client.timeout)
    except OSError as err:
        raise client._unreachable(err) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if client._https:
            sock = client._ssl_context().wrap_socket(sock, server_hostname=client._host)
    except OSError as err:
        sock.close()
        raise client._unreachable(err) from None
    try:
        client._check_pin(sock)
    except RemoteError:
        sock.close()
        raise
    return sock


def read_response(reader: Any) -> tuple[int, Iterator[bytes]]:
    """Read an HTTP/1.1 status line and headers from ``reader`` (a binary file); return the
    status and an iterator over the body as it arrives (chunked, sized or to EOF).

    Just what :func:`exec_once` needs from the hub (aiohttp), not a general client: no
    informational responses, no compressed bodies (it asks for identity)."""
    status, _headers, body = read_response_headers(reader)
    return status, body


def read_response_headers(reader: Any) -> tuple[int, dict[bytes, bytes], Iterator[bytes]]:
    """:func:`read_response`, with the headers (names lower-cased)."""
    line = reader.readline(MAX_LINE + 1)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise RemoteError(ErrorCode.UNAVAILABLE, f"bad HTTP status line from the hub: {line[:100]!r}")
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    while True:
        line = reader.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return status, headers, _chunked(reader)
    length = headers.get(b"content-length")
    if length is not None and length.isdigit():
        return status, headers, _sized(reader, int(length))
    return status, headers, iter(lambda: reader.read1(65536), b"")


def _sized(reader: Any, length: int) -> Iterator[bytes]:
    while length > 0:
        piece = reader.read1(min(length, 65536))
        if not piece:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub closed the connection mid-response")
        length -= len(piece)
        yield piece


def _chunked(reader: Any) -> Iterator[bytes]:
    """Decode ``Transfer-Encoding: chunked``, yielding each chunk as soon as it is read."""
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub closed the connection mid-response")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise RemoteError(
                ErrorCode.UNAVAILABLE, f"bad chunk header from the hub: {line[:100]!r}"
            ) from None
        if size == 0:
            while reader.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        data = reader.read(size)
        if len(data) < size:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub closed the connection mid-response")
        reader.read(2)  # the CRLF after each chunk
        yield data
