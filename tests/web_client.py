"""A browser-like HTTP client for auth tests: keeps the session cookie, shows raw headers.

Plain ``http.client`` on purpose: the tests read ``Set-Cookie`` flags and response headers
exactly as the hub sent them. TLS is not verified (loopback, a hub the test started).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

from tests.cluster import HUB, Hub

COOKIE = "spokehub_session"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        return str(self.json()["error"]["message"])


@dataclass
class Web:
    """One visitor: its cookie jar (the session cookie) and, once signed in, its CSRF token."""

    hub: Hub
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""
    set_cookies: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, csrf: bool = True) -> Answer:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", self.hub.port, context=ctx, timeout=60)
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if csrf and self.csrf and method not in ("GET", "HEAD"):
            hdrs.setdefault("X-CSRF-Token", self.csrf)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            answer = Answer(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        for line in answer.headers.get_all("Set-Cookie") or []:
            self.set_cookies.append(line)
            jar: SimpleCookie = SimpleCookie()
            jar.load(line)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return answer

    def sign_in(self, user: str, password: str, **kw: Any) -> Answer:
        answer = self.call("POST", "/api/session", {"user": user, "password": password}, **kw)
        if answer.status == 200:
            self.csrf = answer.json()["csrf"]
        return answer


def admin_password(hub: Hub) -> str:
    """The one-time admin password the hub printed at its first start."""
    assert hub.proc is not None
    for line in hub.proc.output().splitlines():
        if line.startswith("admin password (shown once): "):
            return line.split(": ", 1)[1].split(";", 1)[0]
    raise AssertionError(f"no admin password in the hub's output:\n{hub.proc.output()}")


def admin_key(hub: Hub) -> str:
    return str(json.loads((hub.dir / "admin.json").read_text())["api_key"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def piped(hub: Hub, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``hub ARGS…`` with ``stdin`` piped in (as a script would pass a password)."""
    return subprocess.run([HUB, *args], input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)})
