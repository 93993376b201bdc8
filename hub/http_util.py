"""Small HTTP helpers shared by the hub's handlers: typed errors, JSON bodies, auth."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.store import Store
from protocol.errors import HTTP_STATUS, ErrorCode, RemoteError
from protocol.tokens import hash_secret

MAX_JSON_BODY = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(code: ErrorCode, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code.value, "message": message}}, status=HTTP_STATUS[code]
    )


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
        raise RemoteError(ErrorCode.INVALID, f"body larger than {MAX_JSON_BODY} bytes")
    raw = await read_limited(request, MAX_JSON_BODY)
    if raw is None:
        raise RemoteError(ErrorCode.INVALID, f"body larger than {MAX_JSON_BODY} bytes")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise RemoteError(ErrorCode.INVALID, "body is not valid JSON") from None
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


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RemoteError as err:
        return error_response(err.code, err.message)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            code = {
                401: ErrorCode.DENIED,
                403: ErrorCode.DENIED,
                404: ErrorCode.NOT_FOUND,
                405: ErrorCode.INVALID,
                413: ErrorCode.INVALID,
            }.get(exc.status, ErrorCode.INVALID)
            return web.json_response(
                {"error": {"code": code.value, "message": exc.reason}}, status=exc.status
            )
        raise


def auth_middleware(store: Store, open_paths: tuple[str, ...], own_auth_prefixes: tuple[str, ...]) -> Callable[..., Any]:
    """Bearer API keys for everything but ``open_paths`` and routes that authenticate
    themselves (``own_auth_prefixes``: the spoke link and the model relay)."""
    cache: dict[str, tuple[float, dict[str, Any]]] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths or request.path.startswith(own_auth_prefixes):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.json_response(
                {"error": {"code": "denied", "message": "missing bearer API key"}},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        key_hash = hash_secret(header[7:].strip())
        hit = cache.get(key_hash)
        now = time.monotonic()
        if hit is not None and now - hit[0] < 2.0:
            row: dict[str, Any] | None = hit[1]
        else:
            # Lookup by hash (an index on SHA-256 of a 256-bit key): nothing secret-dependent
            # is compared byte by byte, and revocation takes effect within two seconds.
            row = await store.api_key_by_hash(key_hash)
            if row is None:
                cache.pop(key_hash, None)
            else:
                cache[key_hash] = (now, row)
                await store.touch_api_key(row["id"])  # at most every 2 s per key: the cache
        if row is None:
            return web.json_response(
                {"error": {"code": "denied", "message": "invalid or revoked API key"}},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        request["api_key"] = row
        return await handler(request)

    return middleware
