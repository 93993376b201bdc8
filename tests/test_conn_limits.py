"""HTTP connections with limits (issue 8, item 4).

Idle TLS connections and slowloris-style slow headers used to stay open indefinitely (2000 were
held for a minute). Now: the first request's headers (and the TLS handshake) must arrive within
``--header-timeout``, an idle keep-alive connection closes after ``--keepalive-timeout``, and one
address holds at most ``--max-connections-per-ip`` — while the admin CLI, from another address,
keeps working through a flood. The flood comes from 127.0.0.2 (every 127/8 address is this
machine's loopback), bounded in count.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Hub, wait_until


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


# One context for every connection: making one loads the system's CA store (tens of ms),
# and 60 of those would outlast a 1 s header timeout before the cap is ever reached.
CLIENT_TLS = _client_context()


def _tls(port: int, source: str = "127.0.0.2") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return CLIENT_TLS.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_by_peer(sock: ssl.SSLSocket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ssl.SSLWantReadError):
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


def _hub(tmp_path: Path, header_timeout: str) -> Iterator[Hub]:
    hub = Hub(tmp_path)
    hub.extra = ["--header-timeout", header_timeout, "--keepalive-timeout", "1",
                 "--max-connections-per-ip", "30"]
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def strict_hub(tmp_path: Path, sandbox_image: str) -> Iterator[Hub]:
    yield from _hub(tmp_path, "1")


@pytest.fixture
def capped_hub(tmp_path: Path, sandbox_image: str) -> Iterator[Hub]:
    """The cap alone: a header timeout long enough that no flood connection is closed for
    slowness before the cap is reached, however slow this machine's handshakes."""
    yield from _hub(tmp_path, "30")


def test_slow_headers_and_idle_keep_alives_are_closed(strict_hub: Hub) -> None:
    slow = _tls(strict_hub.port)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and never the end
    wait_until(lambda: _closed_by_peer(slow), timeout=15, what="the slow-header connection to close")
    idle = _tls(strict_hub.port)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    idle.settimeout(5)
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    wait_until(lambda: _closed_by_peer(idle), timeout=15, what="the idle keep-alive to close")


def test_one_address_is_capped_and_the_cli_works_through_a_flood(capped_hub: Hub) -> None:
    strict_hub = capped_hub
    held: list[ssl.SSLSocket] = []
    refused = 0
    try:
        for _ in range(60):  # twice the cap, each connection idle after its handshake
            try:
                sock = _tls(strict_hub.port)
            except (ConnectionError, ssl.SSLError, OSError):
                refused += 1
                continue
            held.append(sock)
        time.sleep(0.3)
        refused += sum(1 for s in held if _closed_by_peer(s))
        assert refused >= 25, f"only {refused} of 60 refused with a cap of 30"
        started = time.monotonic()
        res = strict_hub.cli("spoke", "list", "--json")
        print(f"CLI during the flood: {1000 * (time.monotonic() - started):.0f} ms")
        assert res.returncode == 0, res.stderr
    finally:
        for sock in held:
            sock.close()
    assert "refusing connections from 127.0.0.2" in (strict_hub.proc.output() if strict_hub.proc else "")
