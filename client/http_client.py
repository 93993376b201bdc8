"""A small synchronous client for the hub's HTTP API, on the standard library only.

It is what the CLI uses, so it imports nothing heavy (no aiohttp, no pydantic): a CLI command
should start about as fast as ``docker exec``. It pins the hub's certificate the same way
spokes do (:func:`protocol.pins.pins_match`): the TLS handshake accepts any certificate, then
the SHA-256 of the one presented must equal the pin before a request (and the API key in it)
is sent. Error responses become :class:`client.errors.ApiError`, as in the asyncio SDK.

:mod:`http.client` (which drags in the :mod:`email` package, ~10 ms) is imported on first
use only: :meth:`HubClient.exec_once` hands the one HTTP exchange ``hub box exec`` needs to
:mod:`client.fast_exec`, which speaks it over a plain socket, so that command never loads it.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

from client import fast_exec
from client.errors import ApiError as ApiError  # re-exported: callers catch it from here
from client.errors import api_error
from client.exec_events import ACCEPT, from_binary, is_binary
from protocol.errors import ErrorCode, RemoteError
from protocol.pins import cert_pin, pins_match

# Bytes an upload body is read and sent in (http.client's default is 8 KiB: 6400 writes for
# 50 MiB, issue 14), and the most a download read returns.
UPLOAD_BLOCK = 1 << 20

if TYPE_CHECKING:
    import http.client


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
                         auto_approve: bool = False, on_loss: str = "resume") -> dict[str, Any]:
        """Start a workstream; the row, with ``message_seq`` (the seq of its first message).
        ``on_loss``: ``resume`` (move on when its spoke is lost) or ``interrupt``."""
        body = {"message": message, "spoke": spoke, "label": label, "model": model,
                "auto_approve": auto_approve, "image": image, "on_loss": on_loss}
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
            if stop_on_approval and Turn.may_wait_for_approval(event):
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
        # An ssl.SSLSocket, or the terminal's client.tls_socket.LockedTlsSocket.
        peer_cert = getattr(sock, "getpeercert", None)
        der = peer_cert(binary_form=True) if peer_cert is not None else None
        if not pins_match(self.pin, der or b""):
            raise RemoteError(
                ErrorCode.DENIED,
                f"the hub's certificate does not match the pin (got {cert_pin(der or b'')[:23]}…)",
            )

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        if self._conn is not None:
            return self._conn
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl_context(),
                blocksize=UPLOAD_BLOCK,
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout,
                                              blocksize=UPLOAD_BLOCK)
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
        if resp.status >= 400:
            raise api_error(resp.status, resp.read())

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
        """Yields events as the hub streams them: {"t": "stdout"|"stderr", "data": bytes}
        (its "d", the NDJSON base64, made on demand: client/exec_events.py), then
        {"t": "exit", "exit_code": …} (or {"t": "error", …}). Asks for the binary exec
        stream (protocol/binary_exec.py); reads NDJSON from a hub without it."""
        body = {"cmd": cmd, "timeout_s": timeout_s, "env": env or {}, "workdir": workdir}
        resp = self._send(
            "POST",
            f"/api/boxes/{quote(box_id)}/exec",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Accept": ACCEPT},
        )
        self._raise_for(resp)
        if is_binary(resp.getheader("Content-Type")):
            yield from from_binary(iter(lambda: resp.read1(1 << 20), b""))
            return
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
        much as the rest of its start-up: see :mod:`client.fast_exec`, which does the work.
        Keep using :meth:`exec_stream` for repeated calls: it reuses the kept-alive
        connection instead of a TLS handshake per call."""
        return fast_exec.exec_once(self, box_id, cmd, timeout_s, env, workdir)

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
        """The file's bytes as they arrive (``read1``: what is there, up to 1 MiB, never a
        wait to fill a fixed size)."""
        resp = self._send("GET", f"/api/boxes/{quote(box_id)}/file?path={quote(path)}")
        self._raise_for(resp)
        while chunk := resp.read1(UPLOAD_BLOCK):
            yield chunk

    def get_bytes(self, path: str) -> bytes:
        resp = self._send("GET", path)
        self._raise_for(resp)
        return resp.read()
