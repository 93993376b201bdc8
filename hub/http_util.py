"""Small HTTP helpers shared by the hub's handlers: typed errors, JSON bodies, auth.

Auth (:func:`auth_middleware`) is one middleware for the whole hub: it accepts a bearer API
key or a session cookie, sets ``request["principal"]``, enforces CSRF on cookie-authenticated
writes, and checks the role the route needs in :data:`hub.roles.ROUTE_ROLES`.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel

from hub import roles
from hub.audit import ACTING
from hub.store import Store
from protocol.errors import HTTP_STATUS, ErrorCode, RemoteError
from protocol.tokens import hash_secret

log = logging.getLogger("spokehub.hub.auth")

MAX_JSON_BODY = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_COOKIE = "spokehub_session"
CSRF_HEADER = "X-CSRF-Token"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KEY_CACHE_S = 2.0
_KEPT_HEADERS = frozenset({"allow", "www-authenticate", "retry-after"})


def is_digits(raw: str) -> bool:
    """Whether ``raw`` is a non-negative integer as a URL writes one: ASCII digits only.
    (``str.isdigit`` is also true of ``²`` and other digits ``int()`` refuses: a 500 that
    schemathesis found. Pinned by tests/test_openapi_regressions.py::
    test_unicode_digits_are_a_400_not_a_500.)"""
    return raw.isascii() and raw.isdigit()


def error_response(code: ErrorCode, message: str, status: int | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code.value, "message": message}}, status=status or HTTP_STATUS[code]
    )


class BodyTooLarge(RemoteError):
    """A request body over its cap: ``invalid``, answered 413 (Payload Too Large) before
    more of it is read. Pinned by tests/test_roles.py::test_bad_bodies_and_unknown_ids."""

    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(ErrorCode.INVALID, f"body larger than {limit} bytes")


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None past ``limit`` bytes. (``content.read(n)`` returns what has
    arrived so far, not n bytes, so a single read truncates large bodies.)"""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise BodyTooLarge(MAX_JSON_BODY)
    raw = await read_limited(request, MAX_JSON_BODY)
    if raw is None:
        raise BodyTooLarge(MAX_JSON_BODY)
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise RemoteError(ErrorCode.INVALID, "body is not valid JSON") from None
    except RecursionError:  # [[[[…]]]] deeper than the parser's stack: bad input, not a 500
        raise RemoteError(ErrorCode.INVALID, "body is nested too deeply") from None
    if not isinstance(body, dict):
        raise RemoteError(ErrorCode.INVALID, "body must be a JSON object")
    return body


def want(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """Fetch a typed field from a request body with a clear error."""
    if key not in body or body[key] is None:
        if default is ...:
            raise RemoteError(ErrorCode.INVALID, f"missing field {key!r}")
        return default
    value = body[key]
    if not isinstance(value, kind) or (
        isinstance(value, bool) and kind in (int, float, (int, float))
    ):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RemoteError(ErrorCode.INVALID, f"field {key!r} must be of type {name}")
    return value


M = TypeVar("M", bound=BaseModel)
_KINDS: dict[Any, type | tuple[type, ...]] = {
    str: str, bool: bool, int: int, float: (int, float), list: list, dict: dict,
}


def _kind(annotation: Any) -> type | tuple[type, ...]:
    """What :func:`want` checks a field of this annotation against: its one JSON type
    (``float`` takes ints too), or ``object`` for a field of several (``memory``: an int or
    a size string), whose handler judges the value itself."""
    members = [a for a in (typing.get_args(annotation) if typing.get_origin(annotation)
                           in (typing.Union, types.UnionType) else (annotation,))
               if a is not type(None)]
    if len(members) != 1:
        return object
    member = members[0]
    if typing.get_origin(member) is typing.Annotated:
        member = typing.get_args(member)[0]
    if typing.get_origin(member) is typing.Literal:
        return type(typing.get_args(member)[0])
    return _KINDS.get(typing.get_origin(member) or member, object)


def fields_of(body: dict[str, Any], model: type[M]) -> M:
    """``body``'s fields as declared by ``model`` (the request model the route's OpenAPI
    operation shows), each read with :func:`want` in declaration order: the same typed
    ``invalid`` errors ("missing field 'name'", "field 'network' must be of type bool") and
    the same rule that ``null`` is absent. Ranges, patterns and enums are left to the
    handler, which answers them with its own messages. Pinned by tests/test_openapi.py::
    test_parsed_bodies_keep_the_want_messages and tests/test_roles.py."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        default = ... if info.is_required() else info.get_default(call_default_factory=True)
        values[name] = want(body, info.alias or name, _kind(info.annotation), default)
    return model.model_construct(**values)


async def parsed_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body (:func:`json_body`) read as ``model`` (:func:`fields_of`)."""
    return fields_of(await json_body(request), model)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RemoteError as err:
        return error_response(err.code, err.message, getattr(err, "http_status", None))
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            code = {
                401: ErrorCode.DENIED,
                403: ErrorCode.DENIED,
                404: ErrorCode.NOT_FOUND,
                405: ErrorCode.INVALID,
                413: ErrorCode.INVALID,
            }.get(exc.status, ErrorCode.INVALID)
            # Keep what the status needs besides the body: ``Allow`` on a 405 (RFC 9110
            # §15.5.6; schemathesis found it missing). Pinned by tests/
            # test_openapi_regressions.py::test_a_405_says_which_methods_are_allowed.
            kept = {k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS}
            return web.json_response(
                {"error": {"code": code.value, "message": exc.reason}}, status=exc.status,
                headers=kept)
        raise


def unauthorized(message: str) -> web.Response:
    """401 in the hub's error shape; ``WWW-Authenticate`` as HTTP requires (Bearer: it makes
    no browser open a password dialog). Pinned by
    tests/test_roles.py::test_requests_without_credentials_get_401 and tests/test_mcp.py."""
    return web.json_response({"error": {"code": "denied", "message": message}}, status=401,
                             headers={"WWW-Authenticate": "Bearer"})


def actor(request: web.Request) -> str:
    """Who made this request, for the audit log: ``user:NAME``, ``key:KEY_ID``, or ``""``.
    Pinned by tests/test_roles.py::test_audit_rows_name_the_actor."""
    who = request.get("principal")
    return f"{who['kind']}:{who['id']}" if who else ""


def _origin(scheme: str, netloc: str) -> str:
    """``scheme://host[:port]`` as a browser writes it in ``Origin`` (no default port)."""
    scheme, netloc = scheme.lower(), netloc.lower()
    return f"{scheme}://{netloc.removesuffix(':443' if scheme == 'https' else ':80')}"


def origin_allowed(request: web.Request, public_url: str) -> bool:
    """True unless the request carries an ``Origin`` naming another site: the hub's own
    origins are its public URL's and the one the client connected to (scheme + ``Host``).
    Browsers send ``Origin`` on every cross-site POST and WebSocket handshake. Pinned by
    tests/test_web_auth.py::test_sign_in_refuses_a_cross_site_post."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(public_url)
    own = {_origin(parts.scheme, parts.netloc), _origin(request.scheme, request.host)}
    return origin.strip().lower().rstrip("/") in own


def _key_principal(row: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "key", "id": row["id"], "name": row["name"], "role": row.get("role", "admin")}


def _describe(principal: dict[str, Any]) -> str:
    if principal["kind"] == "user":
        return f"user {principal['name']}"
    return f"API key {principal['name']} ({principal['id']})"


class FailureLog:
    """A warning per client address for repeated failures, at most one line every
    ``every_s`` per address, saying how many there were since the last line: a brute force
    shows in the log with its source without flooding it. ``clock`` is injected. Pinned by
    tests/test_roles.py::test_wrong_keys_are_logged_once_a_minute_per_address."""

    def __init__(self, what: str, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_addresses: int = 10_000) -> None:
        self.what, self.every_s, self.clock, self.max_addresses = what, every_s, clock, max_addresses
        self._seen: dict[str, tuple[float, int]] = {}  # address -> (last line, count since)

    def note(self, address: str) -> bool:
        """Count one failure from ``address``; True when a line was logged for it now."""
        now = self.clock()
        last, count = self._seen.get(address, (float("-inf"), 0))
        count += 1
        if now - last < self.every_s:
            self._seen[address] = (last, count)
            return False
        log.warning("%d %s from %s%s", count, self.what, address,
                    "" if last == float("-inf") else f" in the last {now - last:.0f} s")
        if len(self._seen) >= self.max_addresses:
            self._seen.clear()
        self._seen[address] = (now, 0)
        return True


def auth_middleware(store: Store, public_url: str) -> Callable[..., Any]:
    """Authenticate and authorize every request, by the rule :func:`hub.roles.rule_for`
    gives its route.

    - Public routes and routes with their own auth (spoke link, relay) pass untouched; the
      hub-to-hub routes (``roles.PEER``) too, to the cluster secret check of their handler
      (hub/cluster/peer_api.py), which must be marked as making it (else 401).
    - ``Authorization: Bearer <key>``: the key's SHA-256 is looked up in a unique index (no
      secret-dependent byte compare), cached 2 s; a revocation empties the cache, so a revoked
      key dies at once. Wrong keys are logged, at most one line a minute per address, with
      how many there were (:class:`FailureLog`).
    - Otherwise the ``spokehub_session`` cookie: its SHA-256 must name a live session (not
      ended, not expired, user still there). A cookie-authenticated write (POST, PUT, PATCH,
      DELETE) must carry ``X-CSRF-Token`` equal to the session's (constant-time compare), and
      any cookie-authenticated request with a foreign ``Origin`` is refused. Bearer requests
      carry no cookie a browser could attach, so they need neither check.
    - No valid credentials: 401; a role below the route's: 403 naming the role needed. A
      route missing from the table is allowed to admins only (and fails the router test).

    Sets ``request["principal"]`` (``{"kind": "key"|"user", "id", "name", "role"}``) and, for
    code that reads it (workstream owner, MCP identity), ``request["api_key"]``: the key's
    row, or ``{"id": "user:NAME", "name", "role"}`` for a user. Pinned by
    tests/test_web_auth.py and tests/test_roles.py."""
    cache: dict[str, tuple[float, int, dict[str, Any]]] = {}
    wrong_keys = FailureLog("requests with an invalid or revoked API key")

    async def key_row(key: str) -> dict[str, Any] | None:
        key_hash = hash_secret(key)
        hit = cache.get(key_hash)
        now = time.monotonic()
        if hit is not None and now - hit[0] < KEY_CACHE_S and hit[1] == store.api_keys_revision:
            return hit[2]
        revision = store.api_keys_revision  # read before the lookup: a revoke in between wins
        row = await store.api_key_by_hash(key_hash)
        if row is None:
            cache.pop(key_hash, None)
            return None
        if len(cache) > 10_000:  # forget stale entries rather than grow without bound
            for stale in [h for h, (t, _r, _row) in cache.items() if now - t >= KEY_CACHE_S]:
                del cache[stale]
        cache[key_hash] = (now, revision, row)
        await store.touch_api_key(row["id"])  # at most every 2 s per key: the cache
        return row

    async def authenticate(request: web.Request) -> web.Response | None:
        """Set the principal, or return the refusal (401/403) to send instead."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            row = await key_row(header[7:].strip())
            if row is None:
                wrong_keys.note(request.remote or "unknown")
                return unauthorized("invalid or revoked API key")
            request["principal"] = _key_principal(row)
            request["api_key"] = row
            return None
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return unauthorized("missing bearer API key or session: sign in, or send "
                                "Authorization: Bearer <API key>")
        session = await store.session_by_hash(hash_secret(cookie))
        if session is None:
            return unauthorized("session expired or ended: sign in again")
        if not origin_allowed(request, public_url):
            return error_response(ErrorCode.DENIED, "cross-site request refused")
        if request.method in STATE_CHANGING:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), str(session["csrf"]).encode()):
                return error_response(ErrorCode.DENIED, "CSRF token missing or wrong")
        name, role = str(session["user"]), str(session["role"])
        request["principal"] = {"kind": "user", "id": name, "name": name, "role": role}
        request["session"] = session
        request["api_key"] = {"id": f"user:{name}", "name": name, "role": role}
        return None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        rule = roles.rule_for(request.method, route) if route is not None else None
        if rule in (roles.PUBLIC, roles.OWN_AUTH):
            return await handler(request)
        if rule == roles.PEER:  # hub-to-hub: the cluster secret, checked by a marked handler
            if getattr(request.match_info.handler, roles.PEER_GUARD, False):
                return await handler(request)
            log.warning("route %s %s is under %s but checks no cluster secret: refused",
                        request.method, route, roles.PEER_PREFIXES[0])
            return unauthorized("this route is for the hubs of the cluster")
        refusal = await authenticate(request)
        if refusal is not None:
            return refusal
        if route is None:  # no such route (404/405): the router's answer, after auth
            return await handler(request)
        if rule is None:
            log.warning("route %s %s has no rule in hub.roles.ROUTE_ROLES: admins only",
                        request.method, route)
            rule = roles.ADMIN
        who = request["principal"]
        ACTING.set(actor(request))  # for the audit rows this request's work writes (hub/audit.py)
        if not roles.allows(who["role"], rule):
            return error_response(ErrorCode.DENIED, f"this needs the {rule} role; "
                                                    f"{_describe(who)} has the {who['role']} role")
        return await handler(request)

    return middleware
