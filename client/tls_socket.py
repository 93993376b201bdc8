"""TLS on a socket that one thread reads while another writes.

``websockets.sync`` reads its socket in a background thread while the caller's thread sends.
On an :class:`ssl.SSLSocket` that means two threads inside one OpenSSL ``SSL`` object at once,
which OpenSSL does not allow: when the hub's TLS 1.3 session tickets arrive while the client
sends its upgrade request, the request is lost (the hub never sees it and closes the
connection after its header timeout), the connection is reset, or the process crashes. It was
seen as ``hub box exec -i`` failing about once in a few hundred runs with "did not receive a
valid HTTP response" or "no close frame received or sent".

:class:`LockedTlsSocket` keeps the TLS state in an :class:`ssl.SSLObject` over memory buffers,
touched only under a lock, and does the blocking socket reads and writes outside it, so a
reader blocked on the network never holds up a writer. Encrypted bytes leave in the order the
``SSL`` object produced them (one send lock covers taking them from the buffer and sending
them, whichever thread produced them). It reads the network one TLS record at a time, as
OpenSSL does on a socket: ``websockets.sync`` waits in ``select`` before each ``recv``, so a
record already taken off the socket but not yet decrypted would wait for the next one to
arrive (a close frame would then wait out the close timeout). Only what
``websockets.sync`` and :func:`client.pty_client.open_pty` use is implemented; anything else is
the plain socket's.

Pinned by tests/client/test_tls_socket.py (thousands of connections, each read by one thread
while another writes, against the hub's own TLS settings).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")
RECORD_HEADER = 5  # content type (1), version (2), length (2)


class LockedTlsSocket:
    """A client TLS connection over ``sock`` (connected, not yet TLS); the handshake is done
    here, in the caller's thread, before any other thread can touch the connection."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_hostname: str | None = None) -> None:
        self.sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_hostname=server_hostname)
        self._tls_lock = threading.Lock()  # the SSL object and its buffers
        self._send_lock = threading.Lock()  # taken first: the order of encrypted bytes out
        self._recv_lock = threading.Lock()  # one reader of the socket at a time
        self._partial = b""  # a record being read (a socket timeout may cut it)
        self._run(self._tls.do_handshake)

    def _flush(self) -> None:
        """Send what the SSL object has produced (the caller holds the send lock)."""
        with self._tls_lock:
            data = self._outgoing.read()
        if data:
            self.sock.sendall(data)

    def _run(self, step: Callable[[], T]) -> T:
        """``step`` on the SSL object until it needs nothing more from the network."""
        while True:
            with self._tls_lock:
                try:
                    result = step()
                    want_read = False
                except ssl.SSLWantReadError:
                    want_read = True
                pending = self._outgoing.pending
            if pending:
                with self._send_lock:
                    self._flush()
            if not want_read:
                return result
            record = self._read_record()  # blocking, outside the TLS and send locks
            with self._tls_lock:
                if record:
                    self._incoming.write(record)
                else:
                    self._incoming.write_eof()

    def _read_record(self) -> bytes:
        """The next whole TLS record from the socket and nothing after it; b"" at its end."""
        with self._recv_lock:
            while True:
                need = RECORD_HEADER
                if len(self._partial) >= RECORD_HEADER:
                    need += int.from_bytes(self._partial[3:5], "big")
                if len(self._partial) == need:
                    record, self._partial = self._partial, b""
                    return record
                chunk = self.sock.recv(need - len(self._partial))
                if not chunk:
                    return b""  # a record cut short is as bad as none: the TLS layer says so
                self._partial += chunk

    def getpeercert(self, binary_form: bool = False) -> Any:
        with self._tls_lock:
            return self._tls.getpeercert(binary_form)

    def version(self) -> str | None:
        with self._tls_lock:
            return self._tls.version()

    def recv(self, bufsize: int) -> bytes:
        """At least one byte (b"" at the end), and all that is decrypted already: nothing
        may stay behind where ``select`` cannot see it, even past ``bufsize``."""
        try:
            data = self._run(lambda: self._tls.read(bufsize))
            with self._tls_lock:
                while self._tls.pending():
                    data += self._tls.read(self._tls.pending())
            return data
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return b""  # the peer's close, with or without close_notify: the end of the stream

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view, view.cast("B") as chunk:
            sent = 0
            while sent < len(chunk):
                sent += self._run(partial(self._tls.write, chunk[sent:]))

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        # settimeout, setsockopt, shutdown, close, fileno, getsockname, ...: the socket's.
        return getattr(self.sock, name)
