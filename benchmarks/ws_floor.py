"""The floor under the hub's dispatch latency on this machine: a bare TLS WebSocket echo
between two Python processes (aiohttp's server, as the hub uses; the ``websockets`` client,
as the spoke uses), no spokehub code at all.

Prints the round trip p50/p99 at 50 messages a second (each process idles between them, as a
hub and spoke do at that rate) and back to back. spokehub's own dispatch figure
(benchmarks/fleet.py) is this plus the protocol's work; read the two together.

    python benchmarks/ws_floor.py [--n 500]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FRAME = '{"jsonrpc":"2.0","id":1,"method":"spoke.ping","params":{},"timeout_ms":10000}'


def _server(port: int, ready: object) -> None:
    from aiohttp import web

    from hub import tls

    async def main() -> None:
        folder = Path(tempfile.mkdtemp())
        cert, key = folder / "tls.crt", folder / "tls.key"
        tls.ensure_self_signed(cert, key, ["127.0.0.1"])

        async def echo(request: web.Request) -> web.WebSocketResponse:
            socket = web.WebSocketResponse()
            await socket.prepare(request)
            async for message in socket:
                await socket.send_str(message.data)
            return socket

        app = web.Application()
        app.router.add_get("/", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.server_context(cert, key)).start()
        ready.set()  # type: ignore[attr-defined]
        await asyncio.sleep(3600)

    asyncio.run(main())


async def _client(port: int, n: int) -> None:
    import websockets

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    async with websockets.connect(f"wss://127.0.0.1:{port}/", ssl=ctx, compression=None,
                                  ping_interval=None) as socket:
        for label, pause, count in (("at 50/s", 0.02, n), ("back to back", 0.0, 4 * n)):
            took = []
            for _ in range(count):
                started = time.perf_counter()
                await socket.send(FRAME)
                await socket.recv()
                took.append(time.perf_counter() - started)
                if pause:
                    await asyncio.sleep(pause)
            took.sort()
            print(f"bare TLS WebSocket round trip {label}, x{count}: p50 "
                  f"{took[count // 2] * 1000:.3f} ms, p99 {took[int(count * 0.99)] * 1000:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    from tests.cluster import free_port

    port = free_port()
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=_server, args=(port, ready), daemon=True)
    server.start()
    ready.wait(30)
    try:
        asyncio.run(_client(port, args.n))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
