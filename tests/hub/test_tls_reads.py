"""hub/tls_reads.py on a real asyncio TLS connection: widened, one read takes far more than
a TLS record; narrowed, it reads about one record at a time again and its large buffer is
gone. The bytes arrive whole either way. No timing asserts."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from hub import tls_reads
from hub.conn_limits import TLS_READ_BUFFER
from hub.tls import ensure_self_signed, server_context

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB


async def test_widen_then_narrow_a_live_tls_connection(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed(cert, key, ["localhost"])
    client_ctx = ssl.create_default_context(cafile=str(cert))
    sizes: list[int] = []
    got = bytearray()
    done = asyncio.Event()
    transports: list[asyncio.BaseTransport] = []
    connected, half = asyncio.Event(), asyncio.Event()

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)
            connected.set()

        def data_received(self, data: bytes) -> None:
            sizes.append(len(data))
            got.extend(data)
            if len(got) >= len(PAYLOAD):
                half.set()
            if len(got) >= 2 * len(PAYLOAD):
                done.set()

    loop = asyncio.get_running_loop()
    saved = asyncio.sslproto.SSLProtocol.max_size
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER  # as GuardedSite sets it
    try:
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=server_context(cert, key))
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                        server_hostname="localhost")
        await asyncio.wait_for(connected.wait(), 60)
        proto = transports[0]._ssl_protocol  # type: ignore[attr-defined]

        tls_reads.widen(transports[0])
        writer.write(PAYLOAD)
        await writer.drain()
        await asyncio.wait_for(half.wait(), 60)
        assert proto.max_size == tls_reads.BULK_READ_BUFFER
        wide_max = max(sizes)

        tls_reads.narrow(transports[0])
        assert proto.max_size == TLS_READ_BUFFER
        assert len(proto._ssl_buffer) == TLS_READ_BUFFER
        sizes.clear()
        writer.write(PAYLOAD)
        await writer.drain()
        await asyncio.wait_for(done.wait(), 60)
        writer.close()
        server.close()
        await server.wait_closed()
    finally:
        asyncio.sslproto.SSLProtocol.max_size = saved
    assert bytes(got) == PAYLOAD * 2
    assert wide_max > 2 * TLS_READ_BUFFER  # many records per read while wide
    # once narrow, a read ends at most one record (and the rest of one a read before cut)
    assert max(sizes) <= 2 * TLS_READ_BUFFER


def test_plain_transports_are_left_alone() -> None:
    tls_reads.widen(None)
    tls_reads.narrow(object())
