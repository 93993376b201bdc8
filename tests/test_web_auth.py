"""Accounts, sign-in, sessions, CSRF and security headers, against a real hub process.

The hub prints a one-time admin password at its first start; sessions are server-side (a
signed-out cookie is dead); cookie-authenticated writes need the CSRF token; sign-in is
rate-limited per address and per user; every response carries the security headers.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from hub.web.auth import SignInLimiter
from tests.cluster import Hub
from tests.web_client import COOKIE, Web, admin_key, admin_password, bearer, piped

CSRF_REFUSAL = {"error": {"code": "denied", "message": "CSRF token missing or wrong"}}


def test_first_start_prints_a_working_admin_password_once(hub: Hub) -> None:
    password = admin_password(hub)
    assert hub.proc is not None
    lines = [ln for ln in hub.proc.output().splitlines() if "admin password" in ln]
    assert lines == [f"admin password (shown once): {password}; change it with "
                     "`hub admin set-password`"]
    web = Web(hub)
    signed = web.sign_in("admin", password)
    assert signed.status == 200 and signed.json()["user"] == "admin"
    assert signed.json()["role"] == "admin" and signed.json()["csrf"]
    hub.stop()
    for path in hub.dir.rglob("*"):  # nothing of it in clear on disk: only a bcrypt hash
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    with sqlite3.connect(hub.dir / "hub.db") as db:
        [(stored,)] = db.execute("SELECT password_hash FROM users WHERE name='admin'")
    assert stored.startswith("$2b$")
    hub.start()
    assert hub.proc.output().count("admin password") == 1, "shown once, not at every start"
    assert Web(hub).sign_in("admin", password).status == 200


def test_session_cookie_flags_and_the_session_body(hub: Hub) -> None:
    web = Web(hub)
    signed = web.sign_in("admin", admin_password(hub))
    [cookie] = signed.headers.get_all("Set-Cookie") or []
    parts = [p.strip() for p in cookie.split(";")]
    token = parts[0].split("=", 1)[1]
    assert parts[0].startswith(f"{COOKIE}=") and len(token) >= 43  # 256 random bits
    flags = {p.split("=")[0].lower(): (p.split("=", 1) + [""])[1] for p in parts[1:]}
    assert "httponly" in flags and "secure" in flags
    assert flags["samesite"] == "Strict" and flags["path"] == "/"
    assert flags["max-age"] == str(12 * 3600)
    again = web.call("GET", "/api/session")
    assert again.status == 200 and again.json() == signed.json()
    assert web.call("GET", "/api/spokes").status == 200, "the cookie alone reads the API"
    hub.stop()
    with sqlite3.connect(hub.dir / "hub.db") as db:
        hashes = [row[0] for row in db.execute("SELECT token_hash FROM sessions")]
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()], "only the SHA-256 is kept"


def test_wrong_password_and_unknown_user_look_the_same(hub: Hub) -> None:
    web = Web(hub)
    wrong = web.sign_in("admin", "not the password")
    unknown = web.sign_in("nobody", "not the password")
    assert wrong.status == unknown.status == 401
    assert wrong.json() == unknown.json() == {
        "error": {"code": "denied", "message": "wrong user name or password"}}
    assert COOKIE not in web.cookies
    assert web.call("GET", "/api/session").status == 401
    for body, fragment in [({"user": "admin"}, "missing field 'password'"),
                           ({"user": 5, "password": "x"}, "field 'user' must be of type str"),
                           ([1], "JSON object")]:
        answer = web.call("POST", "/api/session", body)
        assert answer.status == 400 and fragment in answer.message, answer.body
    answer = web.call("POST", "/api/session", raw=b"{nope")
    assert answer.status == 400 and "not valid JSON" in answer.message
    answer = web.call("POST", "/api/session", raw=b"x" * (2 * 1024 * 1024))
    assert answer.status in (400, 413) and "larger than" in answer.message


def test_csrf_is_required_on_cookie_writes_and_not_on_bearer_ones(hub: Hub) -> None:
    web = Web(hub)
    web.sign_in("admin", admin_password(hub))
    body = {"name": "laptop"}
    missing = web.call("POST", "/api/tokens", body, csrf=False)
    assert missing.status == 403 and missing.json() == CSRF_REFUSAL
    wrong = web.call("POST", "/api/tokens", body, headers={"X-CSRF-Token": "x" + web.csrf})
    assert wrong.status == 403 and wrong.json() == CSRF_REFUSAL
    for method, path in [("DELETE", "/api/tokens/tok_0000000000000000"), ("DELETE", "/api/session"),
                         ("PUT", "/api/users/admin/password")]:
        assert web.call(method, path, csrf=False).json() == CSRF_REFUSAL, (method, path)
    assert web.call("GET", "/api/tokens").status == 200, "reads need no CSRF token"
    right = web.call("POST", "/api/tokens", body)
    assert right.status == 201 and right.json()["name"] == "laptop"
    foreign = web.call("POST", "/api/tokens", body, headers={"Origin": "https://evil.example"})
    assert foreign.status == 403, "a cookie request from another site is refused"
    keyed = Web(hub).call("POST", "/api/tokens", body, headers=bearer(admin_key(hub)))
    assert keyed.status == 201, "bearer requests carry no cookie: no CSRF token needed"


def test_sign_in_refuses_a_cross_site_post(hub: Hub) -> None:
    password = admin_password(hub)
    evil = Web(hub).sign_in("admin", password, headers={"Origin": "https://evil.example"})
    assert evil.status == 403 and "cross-site" in evil.message and COOKIE not in evil.body.decode()
    own = Web(hub).sign_in("admin", password, headers={"Origin": f"https://127.0.0.1:{hub.port}"})
    assert own.status == 200


def test_sign_out_ends_the_session_server_side(hub: Hub) -> None:
    web = Web(hub)
    web.sign_in("admin", admin_password(hub))
    stolen = dict(web.cookies)
    out = web.call("DELETE", "/api/session")
    assert out.status == 204
    assert any(c.startswith(f"{COOKIE}=") and "Max-Age=0" in c for c in web.set_cookies[1:])
    thief = Web(hub, cookies=stolen, csrf=web.csrf)
    for method, path in [("GET", "/api/session"), ("GET", "/api/spokes"), ("POST", "/api/tokens")]:
        answer = thief.call(method, path, {"name": "x"} if method == "POST" else None)
        assert answer.status == 401 and answer.json()["error"]["code"] == "denied", (path, answer.body)


def test_sign_in_is_rate_limited_even_with_the_right_password(hub: Hub) -> None:
    password = admin_password(hub)
    web = Web(hub)
    for _ in range(5):
        assert web.sign_in("admin", "wrong password!").status == 401
    limited = web.sign_in("admin", password)
    assert limited.status == 429 and limited.json()["error"]["code"] == "busy"
    retry = int(limited.headers["Retry-After"])
    assert 0 < retry <= 300
    assert limited.message == f"too many sign-in attempts; try again in {retry} s"
    assert COOKIE not in web.cookies
    # The same address is limited for other user names too.
    assert web.sign_in("someone-else", "whatever it is").status == 429


def test_the_limiter_counts_per_key_in_a_window() -> None:
    now = [1000.0]
    limiter = SignInLimiter(max_failures=3, window_s=60, clock=lambda: now[0])
    keys = ("ip:1.2.3.4", "user:admin")
    for _ in range(3):  # three attempts begun (concurrent or failed: they count alike)
        assert limiter.begin(keys) == 0
        now[0] += 10
    assert limiter.begin(keys) == pytest.approx(30)  # the first attempt was at 1000
    assert limiter.begin(keys) == pytest.approx(30), "a refused attempt is not counted"
    assert limiter.retry_after(("ip:5.6.7.8", "user:bob")) == 0
    assert limiter.retry_after(("ip:5.6.7.8", "user:admin")) == 0, "admin is not locked out"
    now[0] += 30
    assert limiter.retry_after(keys) == 0, "the window passed"
    assert limiter.begin(("ip:9.9.9.9", "user:carol")) == 0
    limiter.succeeded("ip:9.9.9.9", "user:carol")
    assert "user:carol" not in limiter._failures and limiter._failures["ip:9.9.9.9"] == []
    # Guessing one user's password from many addresses meets the user's own, higher limit.
    spread = SignInLimiter(max_failures=2, window_s=60, clock=lambda: now[0], user_failures=4)
    for address in range(4):
        assert spread.begin((f"ip:10.0.0.{address}", "user:admin")) == 0
    assert spread.begin(("ip:10.0.0.99", "user:admin")) == pytest.approx(60)
    assert spread.begin(("ip:10.0.0.99", "user:bob")) == 0
    small = SignInLimiter(max_keys=2, clock=lambda: now[0])
    small.begin(["a", "b", "c"])
    assert set(small._failures) == {"b", "c"}, "memory stays bounded"


def test_security_headers_on_pages_api_and_errors(hub: Hub) -> None:
    web = Web(hub)
    key = bearer(admin_key(hub))
    answers = {
        "page": web.call("GET", "/"),
        "api": web.call("GET", "/api/spokes", headers=key),
        "401": web.call("GET", "/api/spokes"),
        "404": web.call("GET", "/api/nothing-here", headers=key),
        "sign-in": web.call("POST", "/api/session", {"user": "a", "password": "b"}),
    }
    for what, answer in answers.items():
        h = answer.headers
        assert h["Content-Security-Policy"] == (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"), what
        assert "unsafe-inline" not in h["Content-Security-Policy"]
        assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff", what
        assert h["Referrer-Policy"] == "no-referrer", what
        assert h["Strict-Transport-Security"].startswith("max-age="), what
    assert answers["page"].status == 200 and answers["404"].status == 404


def test_set_password_from_a_pipe(hub: Hub) -> None:
    old = admin_password(hub)
    web = Web(hub)
    web.sign_in("admin", old)
    res = piped(hub, "correct horse battery\n", "admin", "set-password")
    assert res.returncode == 0, res.stderr
    assert "password of admin set" in res.stdout
    assert web.call("GET", "/api/session").status == 401, "other sessions end with the change"
    assert Web(hub).sign_in("admin", old).status == 401
    assert Web(hub).sign_in("admin", "correct horse battery").status == 200
    short = piped(hub, "short\n", "admin", "set-password")
    assert short.returncode == 2 and "too short" in short.stderr
    nobody = piped(hub, "long enough password\n", "admin", "set-password", "--user", "nobody")
    assert nobody.returncode == 2 and "no user 'nobody'" in nobody.stderr
    empty = piped(hub, "", "admin", "set-password")
    assert empty.returncode == 2 and "no password on stdin" in empty.stderr

