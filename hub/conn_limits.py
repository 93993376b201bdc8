"""Bounds on the hub's HTTP connections: header timeout, idle keep-alive, per-IP cap.

aiohttp waits for a request's headers as long as the client cares to dribble them (slowloris),
keeps an idle keep-alive connection for an hour by default, and accepts any number of
connections from one address: 2000 idle TLS connections were held for a minute in the security
review. :class:`GuardedSite` serves the hub's listening socket through :class:`ConnectionGuard`,
which closes a connection whose first request's headers have not all arrived within
``header_timeout_s``, and refuses connections from an address that already holds
``max_per_ip``; the TLS handshake itself is bounded too. The keep-alive timeout is aiohttp's own
(``keepalive_timeout`` on the runner). Pinned by tests/test_conn_limits.py.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("spokehub.hub.connections")
HEADERS_END = b"\r\n\r\n"
TLS_READ_BUFFER = 16 * 1024 + 512  # one TLS record (16 KiB of data, and its header and tag)
WARN_EVERY_S = 10.0


class ConnectionGuard:
    """A protocol factory wrapping aiohttp's: each connection is counted per peer address and
    timed until its first request's headers are complete."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], *, header_timeout_s: float,
                 max_per_ip: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.factory, self.header_timeout_s, self.max_per_ip = factory, header_timeout_s, max_per_ip
        self.clock = clock
        self.open: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0
        self._last_warning: dict[str, float] = {}  # per kind of warning

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self.factory())

    def warn(self, message: str, *args: Any) -> None:
        """At most one warning of each kind every few seconds: a flood must not flood the log
        too, and one kind (slow headers) must not hide another (the per-address cap)."""
        now = self.clock()
        if now - self._last_warning.get(message, float("-inf")) >= WARN_EVERY_S:
            self._last_warning[message] = now
            log.warning(message, *args)


class _Guarded(asyncio.Protocol):
    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.peer = ""
        self.counted = False
        self.headers_seen = False
        self.tail = b""
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream server's, TLS or not
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        guard = self.guard
        if guard.open[self.peer] >= guard.max_per_ip:
            guard.refused += 1
            guard.warn("refusing connections from %s: it already holds %d (the per-address cap)",
                       self.peer, guard.open[self.peer])
            transport.abort()
            return
        guard.open[self.peer] += 1
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(guard.header_timeout_s, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self.guard.timed_out += 1
        self.guard.warn("closing a connection from %s: no complete request headers within %.0fs",
                        self.peer, self.guard.header_timeout_s)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.headers_seen:
            window = self.tail + data
            if HEADERS_END in window:
                self.headers_seen = True
                if self.timer is not None:
                    self.timer.cancel()
            else:
                self.tail = window[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.counted:
            self.guard.open[self.peer] -= 1
            if self.guard.open[self.peer] <= 0:
                del self.guard.open[self.peer]
            self.inner.connection_lost(exc)


class GuardedSite(web.SockSite):
    """``web.SockSite`` serving through a :class:`ConnectionGuard`, with a bounded TLS
    handshake (asyncio's default waits a minute for a client that never starts one)."""

    def __init__(self, runner: web.AppRunner, sock: Any, *, header_timeout_s: float,
                 max_per_ip: int, **kw: Any) -> None:
        super().__init__(runner, sock, **kw)
        self.header_timeout_s, self.max_per_ip = header_timeout_s, max_per_ip
        self.guard: ConnectionGuard | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None  # the runner is set up
        self.guard = ConnectionGuard(server, header_timeout_s=self.header_timeout_s,
                                     max_per_ip=self.max_per_ip)
        loop = asyncio.get_running_loop()
        handshake = self.header_timeout_s if self._ssl_context is not None else None
        # asyncio gives every TLS connection a 256 KiB read buffer up front: 220 KiB of the
        # ~330 KiB a connected spoke cost. A TLS record is at most ~16.6 KiB: reads of one
        # lose nothing but that memory (issue 9: 1000 spokes in under 150 MB).
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
        self._server = await loop.create_server(
            self.guard, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=handshake)
