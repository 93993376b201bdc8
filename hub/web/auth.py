"""People at the hub: accounts, sign-in, server-side sessions, and the users API.

- Passwords are hashed with bcrypt (cost 12) on a worker thread, never on the event loop;
  a sign-in for an unknown user checks against a dummy hash, so both failures cost the same
  and answer with one message.
- A session is a random 256-bit cookie (``spokehub_session``: HttpOnly, SameSite=Strict,
  Secure when the hub's URL is HTTPS, Path=/, Max-Age = the lifetime) of which the store
  keeps only the SHA-256, plus a CSRF token the pages send back in ``X-CSRF-Token`` (checked
  by :func:`hub.http_util.auth_middleware`). Signing out ends it in the store: the cookie is
  then dead wherever a copy of it is.
- Sign-in attempts are limited per client address and per user name (:class:`SignInLimiter`,
  in memory, with an injected clock): past the limit, even the right password is refused
  with 429 and ``Retry-After`` until the window has passed.

Routes (their roles are in :data:`hub.roles.ROUTE_ROLES`): ``POST|GET|DELETE /api/session``,
``GET|POST /api/users``, ``DELETE /api/users/{name}``, ``PUT /api/users/{name}/password``.
Pinned end to end by tests/test_web_auth.py and tests/test_roles.py.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import bcrypt
from aiohttp import web

from hub import roles
from hub.http_util import (
    SESSION_COOKIE,
    actor,
    origin_allowed,
    parsed_body,
    unauthorized,
)
from hub.openapi import Reply, operation
from hub.openapi.models import people as m
from hub.openapi.models.common import Error
from hub.store import Store
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import hash_secret

SESSION_LIFETIME_S = 12 * 3600.0
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_BYTES = 72  # bcrypt's limit: longer passwords are refused, never truncated
USER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
WRONG = "wrong user name or password"


async def hash_password(password: str) -> str:
    """The bcrypt hash of ``password``, computed off the event loop (about 0.2 s). Pinned by
    tests/test_web_auth.py::test_first_start_prints_a_working_admin_password_once (only the
    hash is on disk)."""
    data = password.encode()
    return (await asyncio.to_thread(bcrypt.hashpw, data, bcrypt.gensalt())).decode()


_dummy_hash: bytes | None = None


async def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches the bcrypt hash ``stored``; with ``stored`` None (no such
    user) a dummy hash is checked all the same, so a wrong name costs what a wrong password
    does. Pinned by tests/test_web_auth.py::test_wrong_password_and_unknown_user_look_the_same."""
    global _dummy_hash
    data = password.encode()
    if _dummy_hash is None:
        _dummy_hash = await asyncio.to_thread(bcrypt.hashpw, b"spokehub", bcrypt.gensalt())
    if len(data) > MAX_PASSWORD_BYTES or b"\0" in data:
        data, stored = b"x", None  # no stored password can be this; still spend the time
    target = stored.encode() if stored else _dummy_hash
    try:
        ok = await asyncio.to_thread(bcrypt.checkpw, data, target)
    except ValueError:  # a malformed stored hash signs nobody in
        return False
    return ok and stored is not None


def check_new_password(password: str) -> str:
    """``password`` if it is acceptable for an account, else ``RemoteError(INVALID)``.
    Pinned by tests/test_roles.py::test_bad_bodies_and_unknown_ids (too short, too long)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise RemoteError(ErrorCode.INVALID,
                          f"password too short: at least {MIN_PASSWORD_CHARS} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise RemoteError(ErrorCode.INVALID,
                          f"password too long: at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    if "\0" in password:
        raise RemoteError(ErrorCode.INVALID, "password must not contain NUL characters")
    return password


def new_password() -> str:
    """A random password for a new account (~120 bits), shown once. Pinned by
    tests/test_roles.py::test_admin_user_add_list_remove."""
    return secrets.token_urlsafe(15)


async def ensure_first_admin(store: Store) -> str | None:
    """On a hub with no users, make ``admin`` with a random password and return it (for the
    caller to show once; only its bcrypt hash is stored); None when users exist. Pinned by
    tests/test_web_auth.py::test_first_start_prints_a_working_admin_password_once."""
    if await store.list_users():
        return None
    password = new_password()
    return password if await store.create_first_admin(await hash_password(password)) else None


class SignInLimiter:
    """At most ``max_failures`` failed sign-ins per ``window_s`` per client address, and
    ``user_failures`` (default ten times that) per user name, in memory. ``clock`` is
    injected (monotonic seconds) so tests control time.

    Why two limits: one address guessing is stopped after ``max_failures``; the per-user
    limit only caps guessing spread over many addresses. Were it as low as the address
    limit, anyone who can reach the hub could keep ``admin`` locked out with five wrong
    guesses every window; as it is, that takes ``user_failures`` guesses from at least ten
    addresses (docs/security.md, "Sign-in").

    An attempt counts as a failure from the moment it begins (:meth:`begin`) until it
    succeeds (:meth:`succeeded`), so a burst of concurrent guesses cannot all pass the check
    while their bcrypt checks run. At most ``max_keys`` keys are tracked (the oldest forgotten
    first), so a flood of invented user names cannot grow memory. Pinned by
    tests/test_web_auth.py::test_sign_in_is_rate_limited_even_with_the_right_password and
    ::test_the_limiter_counts_per_key_in_a_window."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000,
                 user_failures: int | None = None) -> None:
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.user_failures = user_failures if user_failures is not None else 10 * max_failures
        self.max_keys = max_keys
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until every key in ``keys`` may try again (0: they may now)."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            recent = self._recent(key, now)
            limit = self.user_failures if key.startswith("user:") else self.max_failures
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + self.window_s - now)
        return wait

    def begin(self, keys: Iterable[str]) -> float:
        """Start an attempt: 0 and the attempt counted against every key, or the seconds to
        wait (nothing counted) when a key is over its limit."""
        keys = list(keys)
        wait = self.retry_after(keys)
        if wait > 0:
            return wait
        now = self.clock()
        for key in keys:
            self._failures.setdefault(key, []).append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)
        return 0.0

    def succeeded(self, address_key: str, user_key: str) -> None:
        """The attempt begun for these keys signed in: it no longer counts against the
        address, and the user's failures are forgotten."""
        recent = self._failures.get(address_key)
        if recent:
            recent.pop()
        self._failures.pop(user_key, None)


class WebAuth:
    """Sign-in, sessions and the users API over the store; one per hub process.

    ``https`` decides the cookie's ``Secure`` flag (the hub's URL is HTTPS, itself or through
    a TLS proxy); ``public_url`` is the hub's own origin for the cross-site check. Sessions
    are pinned by tests/test_web_auth.py, the users routes by tests/test_roles.py
    (``test_admin_user_add_list_remove``, ``test_bad_bodies_and_unknown_ids``)."""

    def __init__(self, store: Store, public_url: str, *, https: bool,
                 lifetime_s: float = SESSION_LIFETIME_S,
                 limiter: SignInLimiter | None = None) -> None:
        self.store, self.public_url, self.https = store, public_url, https
        self.lifetime_s = lifetime_s
        self.limiter = limiter or SignInLimiter()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/session", self.sign_in),
            web.get("/api/session", self.current),
            web.delete("/api/session", self.sign_out),
            web.get("/api/users", self.user_list),
            web.post("/api/users", self.user_add),
            web.delete("/api/users/{name}", self.user_remove),
            web.put("/api/users/{name}/password", self.set_password),
        ]

    # ------------------------------------------------------------------ sessions
    @operation("Sign in", tag="session and users", body=m.SignIn, description="Sets the "
               "`spokehub_session` cookie (HttpOnly, SameSite=Strict). Limited per address "
               "and per user name.",
               replies=(Reply(200, "the session; the cookie is set", m.Session,
                              headers={"Set-Cookie": "the session cookie"}),
                        Reply(429, "too many attempts", Error,
                              headers={"Retry-After": "seconds until a new attempt counts"})),
               errors=(401, 403))
    async def sign_in(self, request: web.Request) -> web.Response:
        """``{"user", "password"}`` → 200 ``{"user", "role", "csrf", "expires_at"}`` and the
        session cookie; 401 for a wrong name or password (one message for both); 429 with
        ``Retry-After`` while limited; 403 for a cross-site post."""
        if not origin_allowed(request, self.public_url):
            raise RemoteError(ErrorCode.DENIED, "cross-site sign-in refused")
        body = await parsed_body(request, m.SignIn)
        name, password = body.user, body.password
        remote = request.remote or "unknown"
        keys = (f"ip:{remote}", f"user:{name.strip().lower()[:100]}")
        wait = self.limiter.begin(keys)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return web.json_response(
                {"error": {"code": "busy", "message": "too many sign-in attempts; "
                                                      f"try again in {seconds} s"}},
                status=429, headers={"Retry-After": str(seconds)})
        row = await self.store.get_user(name) if len(name) <= 64 else None
        usable = row is not None and row["disabled_at"] is None
        if not await verify_password(password, row["password_hash"] if usable and row else None):
            await self.store.audit("session.refused", name[:64], f"from {remote}",
                                   result="denied: wrong user or password")
            return unauthorized(WRONG)  # the attempt stays counted (see SignInLimiter)
        assert row is not None
        self.limiter.succeeded(*keys)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        session = await self.store.add_session(hash_secret(token), row["name"], csrf,
                                               self.lifetime_s, remote)
        await self.store.audit("session.created", row["name"], f"from {remote}",
                               actor=f"user:{row['name']}", result="ok")
        response = self._session_body(row["name"], row["role"], csrf, session["expires_at"])
        response.set_cookie(SESSION_COOKIE, token, max_age=int(self.lifetime_s), path="/",
                            httponly=True, secure=self.https, samesite="Strict")
        return response

    @staticmethod
    def _session_body(user: str, role: str, csrf: str, expires_at: float) -> web.Response:
        return web.json_response({"user": user, "role": role, "csrf": csrf,
                                  "expires_at": expires_at},
                                 headers={"Cache-Control": "no-store"})

    @operation("The signed-in user's session", tag="session and users",
               description="401 for a request that carries an API key instead of a session.",
               replies=(Reply(200, "the session (with its CSRF token)", m.Session),))
    async def current(self, request: web.Request) -> web.Response:
        """The signed-in user's session (what the pages read on load); 401 without one."""
        session = request.get("session")
        if session is None:
            return unauthorized("not signed in (this request carries an API key, not a session)")
        return self._session_body(session["user"], session["role"], session["csrf"],
                                  session["expires_at"])

    @operation("Sign out", tag="session and users", description="Ends the session in the "
               "hub (the cookie is dead wherever a copy of it is) and clears the cookie.",
               replies=(Reply(204, "signed out"),))
    async def sign_out(self, request: web.Request) -> web.Response:
        """End this session in the store (204) and clear the cookie."""
        session = request.get("session")
        if session is None:
            return unauthorized("not signed in (this request carries an API key, not a session)")
        await self.store.end_session(session["token_hash"])
        await self.store.audit("session.ended", session["user"], actor=actor(request), result="ok")
        response = web.Response(status=204)
        response.del_cookie(SESSION_COOKIE, path="/", secure=self.https, httponly=True,
                            samesite="Strict")
        return response

    # --------------------------------------------------------------------- users
    @operation("List users", tag="session and users",
               replies=(Reply(200, "every user (no password hashes)", list[m.User]),))
    async def user_list(self, request: web.Request) -> web.Response:
        return web.json_response(await self.store.list_users())

    @operation("Add a user", tag="session and users", body=m.UserAdd,
               replies=(Reply(201, "the user; `password` when one was generated", m.UserAdded),))
    async def user_add(self, request: web.Request) -> web.Response:
        """``{"name", "role", "password"?}`` → 201 ``{"name", "role", "created_at"}``, plus
        ``"password"`` when none was given (the generated one, shown only here)."""
        body = await parsed_body(request, m.UserAdd)
        name = body.name
        if not USER_NAME_RE.fullmatch(name):  # not match: "$" allows a final newline
            raise RemoteError(ErrorCode.INVALID, f"bad user name {name[:70]!r}: lowercase "
                                                 "letters, digits, '.', '_' and '-', max 64")
        try:
            role = roles.check_role(body.role)
        except ValueError as err:
            raise RemoteError(ErrorCode.INVALID, str(err)) from None
        given = body.password
        password = check_new_password(given) if given is not None else new_password()
        row = await self.store.add_user(name, await hash_password(password), role)
        if row is None:
            raise RemoteError(ErrorCode.INVALID, f"user {name} exists")
        await self.store.audit("user.added", name, f"role {role}", actor=actor(request), result="ok")
        out: dict[str, Any] = {"name": name, "role": role, "created_at": row["created_at"]}
        if given is None:
            out["password"] = password
        return web.json_response(out, status=201)

    @operation("Remove a user", tag="session and users", description="Their sessions end. "
               "The last admin cannot be removed (400).",
               replies=(Reply(200, "removed", m.UserRemoved),), errors=(400,))
    async def user_remove(self, request: web.Request) -> web.Response:
        """Remove a user and end their sessions; 404 if unknown, 400 for the last admin."""
        name = request.match_info["name"]
        result = await self.store.remove_user(name)
        if result == "unknown":
            raise RemoteError(ErrorCode.NOT_FOUND, f"no user {name[:70]!r}")
        if result == "last-admin":
            raise RemoteError(ErrorCode.INVALID, f"{name} is the only admin user; add another "
                                                 "admin first")
        await self.store.audit("user.removed", name, actor=actor(request), result="ok")
        return web.json_response({"name": name, "removed": True})

    @operation("Set a user's password", tag="session and users", body=m.PasswordSet,
               description="An admin sets anyone's; other users only their own, giving "
               "`current_password`. Every other session of that user ends.",
               replies=(Reply(200, "set", m.PasswordWasSet),))
    async def set_password(self, request: web.Request) -> web.Response:
        """``{"password", "current_password"?}``: an admin sets anyone's; other users only
        their own, giving the current one. Every other session of that user ends."""
        name = request.match_info["name"]
        who = request["principal"]
        own = who["kind"] == "user" and who["name"] == name
        if not own and not roles.allows(who["role"], roles.ADMIN):
            raise RemoteError(ErrorCode.DENIED,
                              "setting another user's password needs the admin role")
        body = await parsed_body(request, m.PasswordSet)
        password = check_new_password(body.password)
        row = await self.store.get_user(name)
        if row is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no user {name[:70]!r}")
        if not roles.allows(who["role"], roles.ADMIN):
            current = body.current_password or ""
            if not await verify_password(current, row["password_hash"]):
                raise RemoteError(ErrorCode.DENIED, "current password is wrong")
        session = request.get("session")
        keep = session["token_hash"] if own and session is not None else None
        await self.store.set_password(name, await hash_password(password), keep_session=keep)
        await self.store.audit("user.password_set", name, actor=actor(request), result="ok")
        return web.json_response({"name": name, "password_set": True})
