"""A TCP proxy for fault tests: it passes bytes (TLS included, untouched) between a client
and a server on loopback, and can *pause* (hold every byte, connections stay open: a stall)
or *cut* (reset every connection and refuse new ones: a broken network) until resumed.

It runs its own event loop in a thread, so synchronous tests drive it with plain calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

from tests.cluster import free_port


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    # ------------------------------------------------------------ the test's side
    def pause(self) -> None:
        self._call(self._flowing.clear)

    def cut(self) -> None:
        """Reset every connection (no FIN: an RST) and refuse new ones until :meth:`resume`."""
        self._call(self._do_cut)

    def resume(self) -> None:
        self._call(self._do_resume)

    def close(self) -> None:
        self._call(self._do_cut)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, fn: object) -> None:
        done = threading.Event()

        def run() -> None:
            assert callable(fn)
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing.set()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    def _do_cut(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()
        self._flowing.set()

    def _do_resume(self) -> None:
        self._cut = False
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if self._cut:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
