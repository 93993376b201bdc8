"""The hub's REST API (JSON; exec output as NDJSON streamed as it is produced).

Every route maps :class:`RemoteError` codes to HTTP statuses through one table, so the CLI and
the SDK see the same typed code a spoke raised.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from hub import roles
from hub.boxes import BoxService
from hub.disconnect import cancelled_on_disconnect
from hub.health import Health, connected
from hub.http_util import actor, json_body, want
from hub.registry import Registry
from hub.store import Store
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import MAX_PREFIX_CHARS, JoinToken, hash_secret, new_id, new_secret
from protocol.units import parse_size, parse_ttl

MAX_TOKEN_USES = 100_000  # spokes one multi-use join token may enroll


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: absent, ``0``/``false`` or ``1``/``true``."""
    value = request.query.get(name, "0").lower()
    if value not in ("0", "1", "false", "true"):
        raise RemoteError(ErrorCode.INVALID, f"{name} must be 0 or 1, got {value[:20]!r}")
    return value in ("1", "true")


class Api:
    def __init__(
        self, store: Store, registry: Registry, boxes: BoxService, public_url: str, pin: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.registry, self.boxes = store, registry, boxes
        self.public_url, self.pin, self.clock = public_url, pin, clock
        # /healthz: the hub (hub/app.py) adds the model probe (hub/health.py).
        self.health = Health(lambda: connected(self.registry))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/api/info", self.info),
            web.post("/api/tokens", self.token_create),
            web.get("/api/tokens", self.token_list),
            web.delete("/api/tokens/{id}", self.token_revoke),
            web.post("/api/apikeys", self.apikey_create),
            web.get("/api/apikeys", self.apikey_list),
            web.delete("/api/apikeys/{id}", self.apikey_revoke),
            web.get("/api/spokes", self.spoke_list),
            web.delete("/api/spokes/{name}", self.spoke_revoke),
            web.post("/api/spokes/{name}/ping", self.spoke_ping),
            web.post("/api/boxes", self.box_create),
            web.get("/api/boxes", self.box_list),
            web.delete("/api/boxes/{id}", self.box_destroy),
            web.get("/api/boxes/{id}/logs", self.box_logs),
            web.get("/api/boxes/{id}/stats", self.box_stats),
            web.post("/api/boxes/{id}/exec", self.box_exec),
            web.put("/api/boxes/{id}/file", self.box_put_file),
            web.get("/api/boxes/{id}/file", self.box_get_file),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        """200 ``{"ok": true, "status": "ok"|"degraded", "reasons": [...],
        "spokes_connected": N}`` at once (hub/health.py). Pinned by
        tests/test_alerts_e2e.py::test_healthz_is_degraded_without_spokes_or_model."""
        return web.json_response(self.health.report())

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"url": self.public_url, "pin": self.pin, "version": self.registry.version}
        )

    # ---------------------------------------------------------------- tokens
    async def token_create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = want(body, "name", str)
        if not v.SPOKE_NAME_RE.match(name):
            raise RemoteError(
                ErrorCode.INVALID,
                f"bad spoke name {name!r}: lowercase letters, digits and '-', max 63",
            )
        ttl = parse_ttl(body.get("ttl", "1h"))
        if ttl > 30 * 86400:
            raise RemoteError(ErrorCode.INVALID, "ttl may be at most 30d: join tokens must expire")
        # ``uses``: a multi-use token for up to that many spokes named NAME-… (docs/api.md).
        # Pinned by tests/test_multi_use_tokens.py.
        uses = want(body, "uses", int, None)
        if uses is not None and not 1 <= uses <= MAX_TOKEN_USES:
            raise RemoteError(ErrorCode.INVALID, f"uses must be 1..{MAX_TOKEN_USES}")
        if uses is not None and len(name) > MAX_PREFIX_CHARS:
            raise RemoteError(ErrorCode.INVALID, f"a multi-use token's name is a prefix of "
                              f"spoke names: {MAX_PREFIX_CHARS} characters at most")
        token_id, secret = new_id("tok"), new_secret()
        row = await self.store.add_token(token_id, name, hash_secret(secret), ttl, uses)
        token = JoinToken(url=self.public_url, pin=self.pin, token_id=token_id, secret=secret,
                          name=name, prefix=uses is not None)
        detail = token_id if uses is None else f"{token_id} ({uses} uses)"
        await self.store.audit("token.created", name, detail, actor=actor(request), result="ok")
        return web.json_response(
            {
                "token": token.encode(),
                "id": token_id,
                "name": name,
                "expires_at": row["expires_at"],
                "uses": row["uses"],
                "prefix": uses is not None,
            },
            status=201,
        )

    async def token_list(self, request: web.Request) -> web.Response:
        now = self.clock()
        rows = await self.store.list_tokens()
        for row in rows:
            row["prefix"] = bool(row["prefix"])
            row["state"] = (
                "revoked"
                if row["revoked_at"]
                else "used"
                if row["uses_left"] <= 0
                else "expired"
                if row["expires_at"] <= now
                else "valid"
            )
        return web.json_response(rows)

    async def token_revoke(self, request: web.Request) -> web.Response:
        token_id = request.match_info["id"]
        if await self.store.get_token(token_id) is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no token {token_id}")
        revoked = await self.store.revoke_token(token_id)
        if revoked:
            await self.store.audit("token.revoked", token_id, actor=actor(request), result="ok")
        return web.json_response({"id": token_id, "revoked": revoked})

    # -------------------------------------------------------------- api keys
    async def apikey_create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = want(body, "name", str)
        if not 0 < len(name) <= 100:
            raise RemoteError(ErrorCode.INVALID, "name must be 1..100 characters")
        if not name.isprintable():  # it is printed by the CLI and shown on the dashboard
            raise RemoteError(ErrorCode.INVALID, "name must not contain control characters")
        try:  # admin by default, as every key was before roles existed
            role = roles.check_role(want(body, "role", str, roles.ADMIN))
        except ValueError as err:
            raise RemoteError(ErrorCode.INVALID, str(err)) from None
        key_id, key = new_id("key"), "shk_" + new_secret()
        await self.store.add_api_key(key_id, name, hash_secret(key), role)
        await self.store.audit("apikey.created", name, f"{key_id} role {role}", actor=actor(request), result="ok")
        return web.json_response({"key": key, "id": key_id, "name": name, "role": role},
                                 status=201)

    async def apikey_list(self, request: web.Request) -> web.Response:
        return web.json_response(await self.store.list_api_keys())

    async def apikey_revoke(self, request: web.Request) -> web.Response:
        key_id = request.match_info["id"]
        if not await self.store.revoke_api_key(key_id):
            raise RemoteError(ErrorCode.NOT_FOUND, f"no active API key {key_id}")
        await self.store.audit("apikey.revoked", key_id, actor=actor(request), result="ok")
        return web.json_response({"id": key_id, "revoked": True})

    # ---------------------------------------------------------------- spokes
    async def spoke_list(self, request: web.Request) -> web.Response:
        return web.json_response(await self.registry.spoke_summaries())

    async def spoke_revoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if await self.store.get_spoke(name) is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no spoke {name!r}")
        revoked = await self.registry.revoke(name)
        if revoked:  # the registry records the revocation itself; this records who asked
            await self.store.audit("spoke.revoke", name, actor=actor(request), spoke=name,
                                   result="ok")
        return web.json_response({"name": name, "revoked": revoked})

    async def spoke_ping(self, request: web.Request) -> web.Response:
        """No-op round trips through the live link, ``concurrency`` at a time: measures the
        protocol path itself (used by benchmarks and by operators checking a spoke's handlers)."""
        body = await json_body(request)
        count = want(body, "count", int, 1)
        concurrency = want(body, "concurrency", int, 1)
        if not (1 <= count <= 1_000_000 and 1 <= concurrency <= 256):
            raise RemoteError(ErrorCode.INVALID, "count must be 1..1000000, concurrency 1..256")
        link = self.registry.link(request.match_info["name"])
        import asyncio

        remaining = count
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await link.call(v.SPOKE_PING, v.Empty())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        return web.json_response(
            {"count": count, "seconds": seconds, "per_second": count / seconds}
        )

    # ----------------------------------------------------------------- boxes
    async def box_create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        spoke = want(body, "spoke", str)
        params: dict[str, Any] = {
            "image": want(body, "image", str),
            "network": want(body, "network", bool, False),
        }
        if body.get("memory") is not None:
            params["memory_bytes"] = parse_size(body["memory"])
        if body.get("cpus") is not None:
            params["cpus"] = want(body, "cpus", (int, float))
        params.update({"user": want(body, "user", str)} if body.get("user") is not None else {})
        if body.get("workspace") is not None:
            params["workspace_bytes"] = parse_size(body["workspace"])
        env = want(body, "env", dict, {})
        params["env"] = {str(k): str(v) for k, v in env.items()}
        box = await self.boxes.create(spoke, params)
        return web.json_response(box, status=201)

    async def box_list(self, request: web.Request) -> web.Response:
        if request.query.get("all", "").lower() in ("1", "true", "yes"):
            return web.json_response(await self.boxes.inventory(request.query.get("spoke")))
        return web.json_response(await self.boxes.list(request.query.get("spoke")))

    async def box_destroy(self, request: web.Request) -> web.Response:
        result = await self.boxes.destroy(request.match_info["id"])
        return web.json_response(result)

    async def box_logs(self, request: web.Request) -> web.Response:
        tail = (
            int(request.query.get("tail", "200"))
            if request.query.get("tail", "200").isdigit()
            else 200
        )
        data = await self.boxes.logs(request.match_info["id"], tail)
        return web.Response(body=data, content_type="application/octet-stream")

    async def box_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await self.boxes.stats(request.match_info["id"]))

    async def box_exec(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        params = self.boxes.exec_params(request.match_info["id"], {
            "cmd": want(body, "cmd", list),
            "env": want(body, "env", dict, {}),
            "workdir": want(body, "workdir", str, None),
            "timeout_s": want(body, "timeout_s", (int, float), None),
        })
        stream = self.boxes.exec(params)
        try:
            # Errors before any output become proper HTTP statuses; and the exec dies with
            # its caller (hub/disconnect.py), before and after the first output alike.
            first = await cancelled_on_disconnect(request, anext(stream))
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            try:
                item: tuple[str, Any] | None = first
                while item is not None:
                    kind, value = item
                    if kind == "exit":
                        line = {"t": "exit", **value}
                    else:
                        line = {"t": kind, "d": base64.b64encode(value).decode()}
                    await response.write(json.dumps(line).encode() + b"\n")
                    item = await cancelled_on_disconnect(request, anext(stream, None))
            except RemoteError as err:
                await response.write(json.dumps(
                    {"t": "error", "code": err.code.value, "message": err.message}).encode() + b"\n")
            await response.write_eof()
            return response
        finally:
            await stream.aclose()  # cancels the call on the spoke if it has not ended

    async def box_put_file(self, request: web.Request) -> web.Response:
        path = request.query.get("path", "")
        mode = (
            int(request.query.get("mode", "644"), 8)
            if re.fullmatch(r"[0-7]{3,4}", request.query.get("mode", "644"))
            else None
        )
        if mode is None:
            raise RemoteError(ErrorCode.INVALID, "mode must be octal like 644")
        size = request.content_length
        if size is None:
            raise RemoteError(ErrorCode.INVALID, "Content-Length is required")
        if size > v.MAX_FILE_BYTES:
            raise RemoteError(ErrorCode.INVALID, f"file larger than {v.MAX_FILE_BYTES} bytes")

        async def source() -> AsyncIterator[bytes]:
            async for piece in request.content.iter_chunked(64 * 1024):
                yield piece

        result = await self.boxes.put_file(
            request.match_info["id"], path, size, mode, source(),
            parents=_flag(request, "parents"),
            into_dir_name=request.query.get("into_dir_name") or None,
        )
        return web.json_response(result)

    async def box_get_file(self, request: web.Request) -> web.StreamResponse:
        path = request.query.get("path", "")
        stream = self.boxes.get_file(request.match_info["id"], path, v.MAX_FILE_BYTES)
        try:  # like exec, a download stops on the spoke when its caller goes away
            chunk = await cancelled_on_disconnect(request, anext(stream, None))
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await response.prepare(request)
            while chunk is not None:
                await response.write(chunk)
                chunk = await cancelled_on_disconnect(request, anext(stream, None))
            await response.write_eof()
            return response
        finally:
            await stream.aclose()
