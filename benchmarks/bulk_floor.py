"""The floor under the hub's bulk data figures on this machine: the same chain of processes
and TLS hops, with no spokehub code in it, against Docker's own CLI.

``benchmarks/bulk_data.py`` measures spokehub: a Python CLI --https--> hub --wss--> spoke
--> Docker. This script builds that chain from the bare libraries alone and times 50 MiB
through it both ways:

- client: a fresh Python process (``http.client`` over TLS, 1 MiB writes / ``read1``), as
  the CLI is;
- "hub": an aiohttp TLS server that relays an HTTP request body into binary WebSocket
  frames to the spoke, and the spoke's frames into a chunked HTTP response;
- "spoke": a ``websockets`` client over TLS that streams what it gets into Docker's
  ``PUT …/archive`` (a tar made on the fly, from a worker thread, as the spoke does), or
  reads ``GET …/archive`` (the tar header parsed, the file's bytes passed on) or
  ``docker exec``'s attach socket (256 KiB reads, the 8-byte stream headers parsed) into
  frames;

against ``docker cp`` both ways and ``docker exec CID head -c NM /dev/zero`` on the same
container (a volume at ``/workspace``, as a box has), interleaved, median of ``--runs``. No protocol, no flow-control window, no
records, no checks: what is left is the processes, the copies and the two Python TLS hops.
If this floor is above 1.5x Docker's figure, no change inside spokehub's code brings the
real path under it on this machine. ``--unix`` puts the client's hop on a Unix socket (no
TLS there: what one TLS hop costs). Figures of one run, not a test.

    python benchmarks/bulk_floor.py [--mib 50] [--runs 5] [--unix]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import ssl
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK = 256 * 1024
MIB = 1 << 20

CLIENT = r"""
import http.client, ssl, sys
port, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
if port.isdigit():
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx)
else:  # a Unix socket: no TLS on this hop
    import socket
    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(port)
    conn = UnixConnection("localhost")
if mode == "up":
    with open(arg, "rb") as fh:
        size = fh.seek(0, 2); fh.seek(0)
        conn.putrequest("PUT", "/up"); conn.putheader("Content-Length", str(size)); conn.endheaders()
        while piece := fh.read(1 << 20):
            conn.send(piece)
    resp = conn.getresponse(); assert resp.status == 200, resp.read()
elif mode == "down":
    conn.request("GET", "/down"); resp = conn.getresponse(); assert resp.status == 200
    with open(arg, "wb") as fh:
        while piece := resp.read1(1 << 20):
            fh.write(piece)
else:
    conn.request("GET", "/exec?n=" + arg); resp = conn.getresponse(); got = 0
    while piece := resp.read1(1 << 20):
        got += len(piece)
    assert got == int(arg), got
"""


def _hub(port: int, unix_path: str, ready: Any) -> None:
    """The relay: one spoke link, requests relayed over it one at a time."""
    from aiohttp import web

    from hub import tls

    async def main() -> None:
        folder = Path(tempfile.mkdtemp())
        cert, key = folder / "tls.crt", folder / "tls.key"
        tls.ensure_self_signed(cert, key, ["127.0.0.1"])
        link: dict[str, Any] = {}
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        async def spoke_link(request: web.Request) -> web.WebSocketResponse:
            socket = web.WebSocketResponse(max_msg_size=4 * CHUNK)
            await socket.prepare(request)
            link["ws"] = socket
            async for message in socket:
                inbox.put_nowait(message.data)
            return socket

        async def up(request: web.Request) -> web.Response:
            socket = link["ws"]
            await socket.send_str(json.dumps({"op": "up", "size": request.content_length}))
            async for piece in request.content.iter_chunked(CHUNK):
                await socket.send_bytes(piece)
            return web.Response(text=await inbox.get())

        async def relay_down(order: dict[str, Any], request: web.Request) -> web.StreamResponse:
            await link["ws"].send_str(json.dumps(order))
            response = web.StreamResponse()
            await response.prepare(request)
            while isinstance(data := await inbox.get(), bytes):
                await response.write(data)
            await response.write_eof()
            return response

        app = web.Application(client_max_size=1 << 40)
        app.router.add_get("/link", spoke_link)
        app.router.add_put("/up", up)
        app.router.add_get("/exec", lambda request: relay_down(
            {"op": "exec", "n": int(request.query["n"])}, request))
        app.router.add_get("/down", lambda request: relay_down({"op": "down"}, request))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port,
                          ssl_context=tls.server_context(cert, key)).start()
        await web.UnixSite(runner, unix_path).start()
        ready.set()
        await asyncio.sleep(3600)

    asyncio.run(main())


def _spoke(port: int, container_id: str) -> None:
    """The spoke's side: frames into Docker's archive API, Docker's exec stream into frames."""
    import docker
    import websockets

    api = docker.from_env().api

    def put_archive(size: int, pieces: queue.Queue[bytes | None]) -> None:
        info = tarfile.TarInfo("floor.bin")
        info.size = size

        def body() -> Iterator[bytes]:
            yield info.tobuf(format=tarfile.GNU_FORMAT)
            while (piece := pieces.get()) is not None:
                yield piece
            yield b"\0" * (-size % 512) + b"\0" * 1024

        api.put_archive(container_id, "/workspace", body())

    def read_exec(n: int, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[bytes | None]) -> None:
        exec_id = api.exec_create(container_id, ["head", "-c", str(n), "/dev/zero"])["Id"]
        raw = api.exec_start(exec_id, socket=True)._sock
        pending = b""
        try:
            while data := raw.recv(CHUNK):
                pending += data
                payload = []
                while len(pending) >= 8:
                    length = struct.unpack(">I", pending[4:8])[0]
                    if len(pending) < 8 + length:
                        break
                    payload.append(pending[8:8 + length])
                    pending = pending[8 + length:]
                if payload:
                    asyncio.run_coroutine_threadsafe(out.put(b"".join(payload)), loop).result()
        finally:
            raw.close()
            asyncio.run_coroutine_threadsafe(out.put(None), loop).result()

    def read_archive(loop: asyncio.AbstractEventLoop, out: asyncio.Queue[bytes | None]) -> None:
        stream, _stat = api.get_archive(container_id, "/workspace/floor.bin", chunk_size=CHUNK)
        pending, left = b"", -1
        try:
            for data in stream:
                if left < 0:  # the tar header first
                    pending += data
                    if len(pending) < 512:
                        continue
                    left = tarfile.TarInfo.frombuf(pending[:512], "utf-8", "strict").size
                    data, pending = pending[512:], b""
                piece = data[:left]
                left -= len(piece)
                if piece:
                    asyncio.run_coroutine_threadsafe(out.put(piece), loop).result()
        finally:
            asyncio.run_coroutine_threadsafe(out.put(None), loop).result()

    async def main() -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        async with websockets.connect(f"wss://127.0.0.1:{port}/link", ssl=ctx,
                                      compression=None, max_size=4 * CHUNK,
                                      ping_interval=None) as socket:
            loop = asyncio.get_running_loop()
            async for message in socket:
                order = json.loads(message)
                if order["op"] == "up":
                    pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
                    writer = loop.run_in_executor(None, put_archive, order["size"], pieces)
                    left = order["size"]
                    while left > 0:
                        piece = await socket.recv()
                        assert isinstance(piece, bytes)
                        left -= len(piece)
                        await loop.run_in_executor(None, pieces.put, piece)
                    await loop.run_in_executor(None, pieces.put, None)
                    await writer
                    await socket.send("ok")
                else:
                    out: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
                    reader = threading.Thread(
                        target=read_exec, args=(order["n"], loop, out)) if order["op"] == "exec" \
                        else threading.Thread(target=read_archive, args=(loop, out))
                    reader.start()
                    while (data := await out.get()) is not None:
                        await socket.send(data)
                    await socket.send("end")
                    await asyncio.to_thread(reader.join)  # its last put needs the loop

    asyncio.run(main())


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--unix", action="store_true",
                        help="the client reaches the relay over a Unix socket (no TLS on that hop)")
    args = parser.parse_args()
    import docker

    from spoke.boxes.docker_util import KEEPALIVE_CMD
    from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image
    from tests.cluster import free_port

    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[image] {line}",
                                                                    file=sys.stderr))
    client = docker.from_env()
    volume = client.volumes.create(labels={"spokehub.benchmark": "1"})  # /workspace, as a box's
    container = client.containers.run(DEFAULT_IMAGE, KEEPALIVE_CMD, detach=True,
                                      network_mode="none", labels={"spokehub.benchmark": "1"},
                                      volumes={volume.name: {"bind": "/workspace", "mode": "rw"}})
    port = free_port()
    ready = multiprocessing.Event()
    sock_dir = tempfile.TemporaryDirectory()
    unix_path = str(Path(sock_dir.name) / "relay.sock")
    hub = multiprocessing.Process(target=_hub, args=(port, unix_path, ready), daemon=True)
    hub.start()
    ready.wait(30)
    spoke = multiprocessing.Process(target=_spoke, args=(port, container.id), daemon=True)
    spoke.start()
    size = args.mib * MIB
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src.bin"
            src.write_bytes(os.urandom(MIB) * args.mib)
            time.sleep(1)  # the spoke's link is up
            py = [sys.executable, "-c", CLIENT, unix_path if args.unix else str(port)]
            back = Path(tmp) / "back.bin"
            paths = {
                "cp in": (py + ["up", str(src)],
                          ["docker", "cp", str(src), f"{container.id}:/workspace/d.bin"]),
                "cp out": (py + ["down", str(back)],
                           ["docker", "cp", f"{container.id}:/workspace/floor.bin", str(back)]),
                "exec stdout": (py + ["exec", str(size)],
                                ["docker", "exec", container.id, "head", "-c", str(size),
                                 "/dev/zero"]),
            }
            print(f"{args.mib} MiB, median of {args.runs}, bare libraries (no spokehub code)")
            for name, (relay, direct) in paths.items():
                relay_t, direct_t = [], []
                for _ in range(args.runs):
                    relay_t.append(timed(relay))
                    if name == "cp out" and back.stat().st_size != size:
                        raise SystemExit(f"cp out through the relay wrote {back.stat().st_size} bytes")
                    direct_t.append(timed(direct))
                r, d = statistics.median(relay_t), statistics.median(direct_t)
                print(f"{name:12s} bare relay {size / MIB / r:5.0f} MiB/s ({r * 1000:4.0f} ms)  "
                      f"docker {size / MIB / d:5.0f} MiB/s ({d * 1000:4.0f} ms)  "
                      f"ratio {r / d:4.2f}x", flush=True)
    finally:
        spoke.terminate()
        hub.terminate()
        container.remove(force=True)
        volume.remove(force=True)
        sock_dir.cleanup()


if __name__ == "__main__":
    main()
