"""A small TCP load balancer for multi-hub tests (issue 11): one loopback port in front of
several hubs, as an operator's TCP (layer 4) balancer would be.

Each new client connection goes to the next backend in round-robin order; a backend that
refuses the connection (a dead hub) is skipped and the next one tried, and a client is closed
only when every backend refuses. Bytes pass untouched in both directions, TLS included, so a
spoke's certificate pin is checked against the hub behind it, end to end. Like
tests/tcp_proxy.py it runs its own event loop in a thread, so synchronous tests drive it with
plain calls.

Pinned by tests/test_tcp_lb.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from tests.cluster import free_port

T = TypeVar("T")


class TcpLoadBalancer:
    """``127.0.0.1:port`` spreading connections over ``backends`` (ports on 127.0.0.1)."""

    def __init__(self, backends: list[int] | None = None, connect_timeout: float = 5.0) -> None:
        self.port = free_port()
        self.connect_timeout = connect_timeout
        self._backends: list[int] = []
        for backend in backends or []:
            self._check_port(backend)
            if backend not in self._backends:
                self._backends.append(backend)
        self._next = 0
        self._counts: dict[int, int] = {}
        self.refused = 0  # clients closed because no backend took them
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"tcp-lb-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(10) or self._error is not None:
            raise RuntimeError(f"the load balancer could not listen on 127.0.0.1:{self.port}: {self._error}")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ the test's side
    def add_backend(self, port: int) -> None:
        """Send new connections to ``port`` too (a no-op if it is already a backend)."""
        self._check_port(port)

        def add() -> None:
            if port not in self._backends:
                self._backends.append(port)

        self._call(add)

    def remove_backend(self, port: int) -> None:
        """No new connections to ``port``; those open stay open (a drained backend)."""

        def remove() -> None:
            if port not in self._backends:
                raise ValueError(f"{port} is not a backend of this load balancer")
            self._backends.remove(port)

        self._call(remove)

    def backends(self) -> list[int]:
        return self._call(lambda: list(self._backends))

    def counts(self) -> dict[int, int]:
        """Connections each backend has accepted through us so far."""
        return self._call(lambda: dict(self._counts))

    def close(self) -> None:
        """Stop listening and reset every open connection."""
        if not self._thread.is_alive():
            return
        self._call(self._abort_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> TcpLoadBalancer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @staticmethod
    def _check_port(port: object) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"a backend is a TCP port on 127.0.0.1 (1-65535), not {port!r}")

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop (the only place the backend list changes) and return its value."""
        if not self._thread.is_alive():
            raise RuntimeError("the load balancer is closed")
        box: list[T] = []
        failure: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                box.append(fn())
            except BaseException as err:  # handed to the caller's thread
                failure.append(err)
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the load balancer's loop did not answer")
        if failure:
            raise failure[0]
        return box[0]

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", self.port))
        except OSError as err:
            self._error = err
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

    def _abort_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _connect(self) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The next backend in turn that accepts, or None when all refuse."""
        order = list(self._backends)
        if not order:
            return None
        start = self._next % len(order)
        self._next = start + 1
        for i in range(len(order)):
            port = order[(start + i) % len(order)]
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), self.connect_timeout)
            except (OSError, TimeoutError):
                continue
            self._counts[port] = self._counts.get(port, 0) + 1
            return port, reader, writer
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            self.refused += 1
            writer.transport.abort()
            return
        _port, up_reader, up_writer = upstream
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction; an end (EOF or reset) on either side ends both, as a balancer that
        lost one half of a TCP pair must."""
        clean = False
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            clean = True
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            if clean:  # an end: pass it on as an end (FIN), after what was written
                writer.close()
            else:  # a reset: pass it on as a reset
                writer.transport.abort()
