"""The hub's TLS offers AEAD suites only, and its Server header names no versions (issue 8,
item 11): a client that would take a CBC suite on TLS 1.2 is refused; a modern one connects."""

from __future__ import annotations

import re
import socket
import ssl

import pytest

from tests.cluster import Hub


def _handshake(port: int, ciphers: str, version: ssl.TLSVersion) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cipher = tls.cipher()
        return cipher[0] if cipher else ""


def test_only_aead_suites_are_offered(hub: Hub) -> None:
    with pytest.raises(ssl.SSLError):
        _handshake(hub.port, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384", ssl.TLSVersion.TLSv1_2)
    assert "GCM" in _handshake(hub.port, "ECDHE+AESGCM", ssl.TLSVersion.TLSv1_2)
    assert _handshake(hub.port, "ECDHE+AESGCM", ssl.TLSVersion.TLSv1_3).startswith("TLS_")


def test_the_server_header_names_no_versions(hub: Hub) -> None:
    import http.client

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for path in ("/healthz", "/api/spokes", "/nope"):
        conn = http.client.HTTPSConnection("127.0.0.1", hub.port, context=ctx, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("Server") == "spokehub", (path, resp.getheader("Server"))
        conn.close()


def test_malformed_requests_get_no_versions_either(hub: Hub) -> None:
    """aiohttp answers a request it cannot parse itself (400), past the app's hooks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for garbage in (b"\x01\x02 nonsense\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(garbage)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        assert re.match(r"HTTP/1.[01] 400 ", head), head
        servers = [line for line in head.split("\r\n") if line.lower().startswith("server:")]
        assert servers == ["Server: spokehub"], head
