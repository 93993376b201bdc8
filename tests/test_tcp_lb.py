"""The test load balancer (tests/tcp_lb.py) against real loopback servers: round robin,
refusing backends skipped, bytes untouched, ends passed on, bad input refused."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.cluster import free_port, wait_until
from tests.tcp_lb import TcpLoadBalancer


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Backend)
        self.request.sendall(server.name.encode() + b"\n")
        while data := self.request.recv(65536):
            if data == b"bye\n":
                return  # the backend ends the connection
            self.request.sendall(data)


class _Backend(socketserver.ThreadingTCPServer):
    """Says its name, then echoes; ``bye`` makes it close the connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.port = int(self.server_address[1])
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def backends() -> Iterator[list[_Backend]]:
    made = [_Backend(name) for name in ("a", "b", "c")]
    yield made
    for b in made:
        b.close()


def _hello(port: int) -> tuple[socket.socket, str]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return sock, line.decode().strip()


def test_connections_go_round_robin(backends: list[_Backend]) -> None:
    with TcpLoadBalancer([b.port for b in backends]) as lb:
        names = []
        for _ in range(6):
            sock, name = _hello(lb.port)
            names.append(name)
            sock.close()
        assert names == ["a", "b", "c", "a", "b", "c"]
        assert lb.counts() == {b.port: 2 for b in backends}


def test_a_refusing_backend_is_skipped_and_all_refusing_closes_the_client(backends: list[_Backend]) -> None:
    dead = free_port()  # nothing listens there: connections are refused
    with TcpLoadBalancer([backends[0].port, dead, backends[1].port]) as lb:
        names = []
        for _ in range(4):
            sock, name = _hello(lb.port)
            names.append(name)
            sock.close()
        assert sorted(set(names)) == ["a", "b"] and len(names) == 4
        assert dead not in lb.counts()
        lb.remove_backend(backends[0].port)
        lb.remove_backend(backends[1].port)
        sock, name = _hello(lb.port)  # only the dead one is left
        assert name == ""
        sock.close()
        assert lb.refused == 1
        lb.add_backend(backends[2].port)
        sock, name = _hello(lb.port)
        assert name == "c"
        sock.close()


def test_bytes_pass_untouched_both_ways(backends: list[_Backend]) -> None:
    payload = os.urandom(1 << 20)
    with TcpLoadBalancer([backends[0].port]) as lb:
        sock, name = _hello(lb.port)
        assert name == "a"
        got = bytearray()

        def read() -> None:
            while len(got) < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        sock.sendall(payload)
        reader.join(30)
        assert bytes(got) == payload
        sock.close()


def test_an_end_on_the_backend_side_ends_the_client(backends: list[_Backend]) -> None:
    with TcpLoadBalancer([backends[0].port]) as lb:
        sock, _ = _hello(lb.port)
        sock.sendall(b"bye\n")
        assert sock.recv(10) == b""  # the backend closed: so does the balancer, toward us
        sock.close()
        # the listener itself survives a connection's end
        again, name = _hello(lb.port)
        assert name == "a"
        again.close()


def test_backends_change_while_running_and_bad_input_is_refused(backends: list[_Backend]) -> None:
    with TcpLoadBalancer() as lb:
        assert lb.backends() == []
        sock, name = _hello(lb.port)
        assert name == "" and lb.refused == 1
        sock.close()
        lb.add_backend(backends[1].port)
        lb.add_backend(backends[1].port)  # twice is once
        assert lb.backends() == [backends[1].port]
        with pytest.raises(ValueError, match="not a backend"):
            lb.remove_backend(backends[0].port)
        for bad in (0, 70000, "8443", True):
            with pytest.raises(ValueError, match="a backend is a TCP port"):
                lb.add_backend(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="a backend is a TCP port"):
            TcpLoadBalancer([-1])
    with pytest.raises(RuntimeError, match="closed"):
        lb.add_backend(backends[0].port)


def test_closing_resets_open_connections(backends: list[_Backend]) -> None:
    lb = TcpLoadBalancer([backends[0].port])
    sock, _ = _hello(lb.port)
    lb.close()
    wait_until(lambda: _ended(sock), timeout=10, what="the client's connection to end")
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", lb.port), timeout=5).close()


def _ended(sock: socket.socket) -> bool:
    try:
        return sock.recv(10) == b""
    except OSError:
        return True
