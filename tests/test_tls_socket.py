"""client/tls_socket.py: one thread reads a TLS connection while another writes.

The server is asyncio's TLS with the hub's own settings (hub/tls.py's ``server_context``:
TLS 1.3, which sends session tickets just after the handshake). Each client does what
``websockets.sync`` does to the terminal's socket: a reader thread is already in ``recv`` when
the caller sends its request. On a plain ``ssl.SSLSocket`` this loses the request in about one
connection in twenty here, or corrupts the process's memory (OpenSSL forbids two threads in one
``SSL`` object); that is how ``hub box exec -i`` failed now and then.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from client.tls_socket import LockedTlsSocket
from hub.tls import certificate_pin, ensure_self_signed, server_context
from protocol.pins import pins_match

REQUEST = b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n"


class TlsServer:
    """On 127.0.0.1: answers a request's headers with ``OK``, echoes bytes back (``ECHO``
    and their count first) or sends two records at once (``TWO!``), then closes; in its own thread and event
    loop."""

    def __init__(self, tmp: Path) -> None:
        self.cert, key = tmp / "cert.pem", tmp / "key.pem"
        ensure_self_signed(self.cert, key, ["127.0.0.1"])
        self.context = server_context(self.cert, key)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "the test's TLS server did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readexactly(4), 10)
            if head == b"TWO!":  # two records in one segment, then wait for the client's close
                raw = writer.get_extra_info("socket")
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                writer.write(b"first")
                writer.write(b"second")
                await writer.drain()
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                await reader.read()
            elif head == b"ECHO":  # then the length (8 bytes), then that many bytes
                left = int.from_bytes(await reader.readexactly(8), "big")
                while left:
                    data = await reader.read(min(left, 65536))
                    if not data:
                        break
                    left -= len(data)
                    writer.write(data)
                    await writer.drain()
            else:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                writer.write(b"OK\r\n")
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # the client sees the close without an answer: the test's failure
        writer.close()

    def connect(self) -> LockedTlsSocket:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return LockedTlsSocket(raw, context, server_hostname="127.0.0.1")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TlsServer]:
    srv = TlsServer(tmp_path)
    yield srv
    srv.stop()


def _read_all(sock: LockedTlsSocket, into: list[bytes]) -> None:
    while data := sock.recv(65536):
        into.append(data)


def _request_while_reading(server: TlsServer) -> bytes:
    """The reader is in ``recv`` (the tickets on their way) when the request is sent."""
    sock = server.connect()
    got: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(sock, got))
    reader.start()
    try:
        sock.sendall(REQUEST)
        reader.join(30)
    finally:
        sock.close()
    return b"".join(got)


def test_a_request_sent_while_another_thread_reads_is_never_lost(server: TlsServer) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _request_while_reading(server), range(1500)))
    lost = [answer for answer in answers if answer != b"OK\r\n"]
    assert not lost, f"{len(lost)} of {len(answers)} requests got no answer: {lost[:3]}"


def test_bytes_both_ways_at_once_arrive_whole_and_in_order(server: TlsServer) -> None:
    payload = os.urandom(8 * 1024 * 1024 + 5)
    sock = server.connect()
    got: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(sock, got))
    reader.start()
    sock.sendall(b"ECHO" + len(payload).to_bytes(8, "big"))
    view = memoryview(payload)
    for start in range(0, len(payload), 100_003):  # odd sizes: records cut anywhere
        sock.sendall(view[start:start + 100_003])
    reader.join(60)  # the server closes once it has echoed it all
    sock.close()
    echoed = b"".join(got)
    assert len(echoed) == len(payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


def test_what_arrived_is_readable_where_select_can_see_it(server: TlsServer) -> None:
    """websockets.sync waits in ``select`` on the socket before each ``recv``: a record taken
    off the socket but not handed out would wait there for more bytes (a close frame for the
    close timeout, seen as ten idle seconds at the end of every ``hub box exec -i``)."""
    sock = server.connect()
    try:
        sock.sendall(b"TWO!")
        got = b""
        while got != b"firstsecond":
            readable, _, _ = select.select([sock], [], [], 20)
            assert readable, f"select saw nothing more to read, with {got!r} read so far"
            got += sock.recv(65536)
    finally:
        sock.close()


def test_the_peer_certificate_is_there_to_pin_and_a_close_is_an_empty_read(
        server: TlsServer) -> None:
    sock = server.connect()
    try:
        assert sock.version() == "TLSv1.3"
        der = sock.getpeercert(binary_form=True)
        assert pins_match(certificate_pin(server.cert), der)
        sock.sendall(REQUEST)
        got: list[bytes] = []
        _read_all(sock, got)  # returns on the server's close
        assert b"".join(got) == b"OK\r\n"
        assert sock.recv(10) == b""
    finally:
        sock.close()


def test_a_server_that_is_not_tls_fails_the_handshake_clearly(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_plain_http() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer_plain_http, daemon=True)
    thread.start()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with pytest.raises(ssl.SSLError):
        LockedTlsSocket(raw, context, server_hostname="127.0.0.1")
    raw.close()
    thread.join(10)
    listener.close()
