"""A small synchronous client for the hub's HTTP API, on the standard library only.

It is what the CLI uses, so it imports nothing heavy (no aiohttp, no pydantic): a CLI command
should start about as fast as ``docker exec``. It pins the hub's certificate the same way
spokes do: the TLS handshake accepts any certificate, then the SHA-256 of the one presented
must equal the pin before a request (and the API key in it) is sent.

:mod:`http.client` (which drags in the :mod:`email` package, ~10 ms) is imported on first
use only: :meth:`HubClient.exec_once` speaks the one HTTP exchange ``hub box exec`` needs
over a plain socket, so that command never loads it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

from protocol.errors import ErrorCode, RemoteError

if TYPE_CHECKING:
    import http.client

_MAX_LINE = 65536  # longest status or header line accepted from the hub


class ApiError(RemoteError):
    def __init__(self, code: ErrorCode | str, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


def default_dir(kind: str) -> Path:
    """Where ``hub serve`` (kind "hub") and ``spoke`` (kind "spoke") keep their state by
    default: ``$XDG_DATA_HOME/spokehub/KIND``, else ``~/.local/share/spokehub/KIND``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "spokehub" / kind


def local_hub_dir(data_dir: Path | None = None) -> Path:
    """The data dir of the local hub, as the CLI finds it: the argument, ``SPOKEHUB_HUB_DIR``,
    or the default."""
    return data_dir or Path(os.environ.get("SPOKEHUB_HUB_DIR") or default_dir("hub"))


def admin_credentials(data_dir: Path) -> tuple[str, str, str | None]:
    """(url, api key, pin) from the hub's ``admin.json``; ``SPOKEHUB_URL`` and
    ``SPOKEHUB_API_KEY`` override the first two (e.g. a remote hub)."""
    path = data_dir / "admin.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise RemoteError(
            ErrorCode.UNAVAILABLE,
            f"no hub in {data_dir} ({path} is missing): start one with 'hub serve'",
        ) from None
    return (os.environ.get("SPOKEHUB_URL") or doc["url"],
            os.environ.get("SPOKEHUB_API_KEY") or doc["api_key"], doc.get("pin") or None)


class WorkstreamMixin:
    """Workstream calls on the synchronous client (kept apart to keep the core small).

    :class:`client.async_client.AsyncHubClient` has the same calls, as coroutines and async
    iterators (``tests/test_client_parity.py`` holds the two to one list)."""

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _send(self, method: str, path: str, body: bytes | BinaryIO | None = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:  # pragma: no cover
        raise NotImplementedError

    def _another(self) -> HubClient:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def start_workstream(self, message: str, *, spoke: str | None = None, label: str | None = None,
                         model: str | None = None, image: str | None = None,
                         auto_approve: bool = False) -> dict[str, Any]:
        """Start a workstream; the row, with ``message_seq`` (the seq of its first message)."""
        body = {"message": message, "spoke": spoke, "label": label, "model": model,
                "auto_approve": auto_approve, "image": image}
        return dict(self.request("POST", "/api/ws", body))

    def send_message(self, ws_id: str, message: str) -> dict[str, Any]:
        """Send a follow-up; the row, with ``message_seq`` (the seq of this message's event)."""
        return dict(self.request("POST", f"/api/ws/{quote(ws_id)}/messages", {"message": message}))

    def ws_events(self, ws_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Every event after ``after``, then live ones, forever (the caller stops reading)."""
        # A connection of its own: the stream stays open while the caller makes other
        # requests on this client (http.client allows one response in flight per connection).
        stream = self._another()
        try:
            while True:
                resp = stream._send("GET", f"/api/ws/{quote(ws_id)}/stream?after={after}")
                HubClient._raise_for(resp)
                while line := resp.readline():
                    event = json.loads(line)
                    if "seq" in event:
                        after = event["seq"]
                        yield event
        finally:
            stream.close()

    events = ws_events

    def wait_reply(self, ws_id: str, *, after: int | None = None, on_event: Any = None,
                   stop_on_approval: bool = False) -> dict[str, Any]:
        """Follow the workstream from seq ``after`` (default: just before its last message)
        until the agent has answered, or, with ``stop_on_approval``, until it waits for an
        approval. Returns ``{"id", "answer", "state", "error", "transcript",
        "pending_approvals"}``; ``on_event`` sees each event as it arrives."""
        from client.turns import Turn

        if after is None:
            after = max(int(self.request("GET", f"/api/ws/{quote(ws_id)}")["last_message_seq"]) - 1, 0)
        turn = Turn(after_seq=after)
        transcript: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        for event in self.ws_events(ws_id, after):
            transcript.append(event)
            turn.feed(event)
            if on_event is not None:
                on_event(event)
            if turn.done:
                break
            if stop_on_approval and event["kind"] == "approval_requested":
                row = self.request("GET", f"/api/ws/{quote(ws_id)}")
                if turn.needs_approval(row):
                    pending = list(row["pending_approvals"])
                    break
        return turn.result(ws_id, transcript, pending)

    def send_and_wait(self, message: str, *, ws_id: str | None = None, spoke: str | None = None,
                      label: str | None = None, model: str | None = None, auto_approve: bool = False,
                      image: str | None = None, on_event: Any = None) -> dict[str, Any]:
        """Start a workstream (or continue ``ws_id``) and wait for the reply to ``message``
        (see :meth:`wait_reply`)."""
        if ws_id is None:
            row = self.start_workstream(message, spoke=spoke, label=label, model=model,
                                        image=image, auto_approve=auto_approve)
        else:
            row = self.send_message(ws_id, message)
        return self.wait_reply(str(row["id"]), after=int(row["message_seq"]) - 1, on_event=on_event)


class HubClient(WorkstreamMixin):
    def __init__(
        self, url: str, api_key: str, pin: str | None = None, timeout: float = 3600.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"bad hub URL {url!r}")
        self.url, self.api_key, self.pin, self.timeout = url.rstrip("/"), api_key, pin, timeout
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self._conn: http.client.HTTPConnection | None = None

    def _another(self) -> HubClient:
        """A client with the same hub, key and pin, on its own connection."""
        return HubClient(self.url, self.api_key, self.pin, self.timeout)

    @classmethod
    def from_data_dir(cls, data_dir: Path | None = None) -> HubClient:
        """Use what ``hub serve`` wrote for the local admin (``admin.json``, mode 0600) in
        ``data_dir`` (default: the local hub's, see :func:`local_hub_dir`)."""
        return cls(*admin_credentials(local_hub_dir(data_dir)))

    # ------------------------------------------------------------- transport
    def _ssl_context(self) -> ssl.SSLContext:
        if self.pin:
            # Trust comes from the pin; loading the system CA bundle would only cost time.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context()

    def _unreachable(self, err: OSError) -> RemoteError:
        return RemoteError(ErrorCode.UNAVAILABLE, f"cannot reach the hub at {self.url}: {err}")

    def _check_pin(self, sock: Any) -> None:
        """Refuse (before anything is sent) a hub whose certificate is not the pinned one."""
        if not (self._https and self.pin):
            return
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        got = "sha256:" + hashlib.sha256(der or b"").hexdigest()
        if not hmac.compare_digest(got, self.pin.lower()):
            raise RemoteError(
                ErrorCode.DENIED,
                f"the hub's certificate does not match the pin (got {got[:23]}…)",
            )

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        if self._conn is not None:
            return self._conn
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl_context()
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.connect()
        except OSError as err:
            raise self._unreachable(err) from None
        try:
            self._check_pin(conn.sock)
        except RemoteError:
            conn.close()
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        import http.client

        hdrs = {"Authorization": f"Bearer {self.api_key}", **(headers or {})}
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=hdrs)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the hub closed: retry once on a new one
                if attempt or (body is not None and not isinstance(body, bytes)):
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_for(resp: http.client.HTTPResponse) -> None:
        if resp.status < 400:
            return
        HubClient._raise_error(resp.status, resp.read())

    @staticmethod
    def _raise_error(status: int, raw: bytes) -> None:
        try:
            err = json.loads(raw)["error"]
            raise ApiError(err.get("code", "internal"), err.get("message", ""), status)
        except (ValueError, KeyError, TypeError):
            raise ApiError(ErrorCode.INTERNAL, f"HTTP {status}: {raw[:200]!r}", status) from None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        resp = self._send(
            method, path, data, {"Content-Type": "application/json"} if data else None
        )
        self._raise_for(resp)
        return json.loads(resp.read() or b"null")

    # ------------------------------------------------------------------- API
    def exec_stream(
        self,
        box_id: str,
        cmd: list[str],
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yields NDJSON events as the hub streams them: {"t": "stdout"|"stderr", "d": b64},
        then {"t": "exit", "exit_code": …} (or {"t": "error", …})."""
        body = {"cmd": cmd, "timeout_s": timeout_s, "env": env or {}, "workdir": workdir}
        resp = self._send(
            "POST",
            f"/api/boxes/{quote(box_id)}/exec",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        self._raise_for(resp)
        while True:
            line = resp.readline()
            if not line:
                return
            yield json.loads(line)

    def exec_once(
        self,
        box_id: str,
        cmd: list[str],
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """:meth:`exec_stream` for a process that makes this one call and exits.

        Same request, events and errors, but on a connection of its own (closed afterwards)
        and without :mod:`http.client`, whose import would cost ``hub box exec`` about as
        much as the rest of its start-up. Keep using :meth:`exec_stream` for repeated calls:
        it reuses the kept-alive connection instead of a TLS handshake per call."""
        body = json.dumps(
            {"cmd": cmd, "timeout_s": timeout_s, "env": env or {}, "workdir": workdir}
        ).encode()
        host = self._host if ":" not in self._host else f"[{self._host}]"
        default_port = 443 if self._https else 80
        head = (
            f"POST /api/boxes/{quote(box_id)}/exec HTTP/1.1\r\n"
            f"Host: {host}{'' if self._port == default_port else f':{self._port}'}\r\n"
            f"Authorization: Bearer {self.api_key}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Accept-Encoding: identity\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        sock = self._open_socket()
        try:
            sock.sendall(head + body)  # one write: no Nagle / delayed-ACK stall
            with sock.makefile("rb") as reader:
                status, body_chunks = _read_response(reader)
                if status >= 400:
                    self._raise_error(status, b"".join(body_chunks))
                pending = b""
                for piece in body_chunks:
                    pending += piece
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
                if pending.strip():
                    yield json.loads(pending)
        finally:
            sock.close()

    def _open_socket(self) -> socket.socket:
        """A new connection to the hub, TLS-wrapped and pin-checked when https."""
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self.timeout)
        except OSError as err:
            raise self._unreachable(err) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                sock = self._ssl_context().wrap_socket(sock, server_hostname=self._host)
        except OSError as err:
            sock.close()
            raise self._unreachable(err) from None
        try:
            self._check_pin(sock)
        except RemoteError:
            sock.close()
            raise
        return sock

    def put_file(self, box_id: str, path: str, data: BinaryIO, size: int, mode: int = 0o644,
                 *, parents: bool = False, into_dir_name: str | None = None) -> Any:
        """Upload ``size`` bytes from ``data``; returns ``{"size", "path"}`` (the absolute path
        the spoke wrote). ``path`` may be relative to the box's working directory; if it is a
        directory the file lands in it as ``into_dir_name``; ``parents`` makes missing ones."""
        query = f"path={quote(path)}&mode={mode:o}"
        if parents:
            query += "&parents=1"
        if into_dir_name is not None:
            query += f"&into_dir_name={quote(into_dir_name)}"
        resp = self._send(
            "PUT",
            f"/api/boxes/{quote(box_id)}/file?{query}",
            data,
            {"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
        self._raise_for(resp)
        return json.loads(resp.read())

    def get_file(self, box_id: str, path: str) -> Iterator[bytes]:
        resp = self._send("GET", f"/api/boxes/{quote(box_id)}/file?path={quote(path)}")
        self._raise_for(resp)
        while chunk := resp.read(256 * 1024):
            yield chunk

    def get_bytes(self, path: str) -> bytes:
        resp = self._send("GET", path)
        self._raise_for(resp)
        return resp.read()



def _read_response(reader: Any) -> tuple[int, Iterator[bytes]]:
    """Read an HTTP/1.1 status line and headers from ``reader`` (a binary file); return the
    status and an iterator over the body as it arrives (chunked, sized or to EOF).

    Just what :meth:`HubClient.exec_once` needs from the hub (aiohttp), not a general
    client: no informational responses, no compressed bodies (it asks for identity)."""
    line = reader.readline(_MAX_LINE + 1)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise RemoteError(ErrorCode.UNAVAILABLE, f"bad HTTP status line from the hub: {line[:100]!r}")
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    while True:
        line = reader.readline(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return status, _chunked(reader)
    length = headers.get(b"content-length")
    if length is not None and length.isdigit():
        return status, _sized(reader, int(length))
    return status, iter(lambda: reader.read1(65536), b"")


def _sized(reader: Any, length: int) -> Iterator[bytes]:
    while length > 0:
        piece = reader.read1(min(length, 65536))
        if not piece:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub closed the connection mid-response")
        length -= len(piece)
        yield piece


def _chunked(reader: Any) -> Iterator[bytes]:
    """Decode ``Transfer-Encoding: chunked``, yielding each chunk as soon as it is read."""
    while True:
        line = reader.readline(_MAX_LINE + 1)
        if not line:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub closed the connection mid-response")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise RemoteError(
                ErrorCode.UNAVAILABLE, f"bad chunk header from the hub: {line[:100]!r}"
            ) from None
        if size == 0:
            while reader.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        data = reader.read(size)
        if len(data) < size:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub closed the connection mid-response")
        reader.read(2)  # the CRLF after each chunk
        yield data
