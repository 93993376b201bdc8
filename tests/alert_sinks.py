"""Real receivers for the hub's alerts, on 127.0.0.1, each in a thread of its own (so the
sync end-to-end tests can block while they receive): an HTTP webhook server
(:class:`WebhookSink`, the standard library's threading HTTP server) and an SMTP server
(:class:`SmtpSink`, aiosmtpd's controller, with optional STARTTLS and AUTH). Not stand-ins:
the hub's real client code talks to real servers; they only record what arrived.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from hub.tls import ensure_self_signed
from tests.cluster import free_port


class WebhookSink:
    """Records every POST body (JSON). ``fail_first`` answers that many requests with
    ``fail_status`` first (to see the hub retry); ``delay_s`` answers each that late."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first, self.fail_status, self.delay_s = fail_first, fail_status, delay_s
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink._lock:
                    sink.attempts += 1
                    failing = sink.attempts <= sink.fail_first or sink.delay_s > 0
                    if not failing:
                        sink.bodies.append(json.loads(body))
                time.sleep(sink.delay_s)  # a slow receiver (its own thread): never recorded
                try:
                    self.send_response(sink.fail_status if failing else 200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def texts(self) -> list[str]:
        with self._lock:
            return [str(b.get("text", "")) for b in self.bodies]

    def alerts(self, rule: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [b["alert"] for b in self.bodies if rule is None or b["alert"]["rule"] == rule]


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.original_content or b""
        self.messages.append(message_from_bytes(content))
        return "250 OK"


class SmtpSink:
    """An SMTP server on 127.0.0.1. With ``tls_dir`` it offers (and requires) STARTTLS with a
    self-signed certificate for 127.0.0.1 whose file is :attr:`cert` (point the client's
    ``SSL_CERT_FILE`` at it); with ``login`` (``user``, ``password``) it requires AUTH."""

    def __init__(self, tls_dir: Path | None = None, login: tuple[str, str] | None = None) -> None:
        self.recorder = _Recorder()
        self.port = free_port()
        self.cert: Path | None = None
        kwargs: dict[str, Any] = {}
        if tls_dir is not None:
            self.cert, key = tls_dir / "smtp.crt", tls_dir / "smtp.key"
            ensure_self_signed(self.cert, key, ["127.0.0.1"])
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert, key)
            kwargs.update(tls_context=context, require_starttls=True)
        if login is not None:
            recorder = self.recorder

            def authenticate(server: SMTP, session: Session, envelope: Envelope,
                             mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (
                    data.login.decode(), data.password.decode()) == login
                if ok:
                    recorder.logins.append(data.login.decode())
                return AuthResult(success=ok, handled=False)  # failed: aiosmtpd answers 535

            kwargs.update(authenticator=authenticate, auth_require_tls=tls_dir is not None)
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[Message]:
        return list(self.recorder.messages)
