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

from hub import roles, tls_reads
from hub.boxes import BoxService
from hub.disconnect import cancelled_on_disconnect
from hub.events_api import int_param
from hub.health import Health, connected
from hub.http_util import actor, parsed_body
from hub.openapi import NDJSON, OCTETS, Param, Reply, int_or_empty, operation
from hub.openapi.models import cluster as m
from hub.registry import Registry
from hub.store import Store
from protocol import binary_exec
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import MAX_PREFIX_CHARS, JoinToken, hash_secret, new_id, new_secret
from protocol.units import parse_size, parse_ttl

MAX_TOKEN_USES = 100_000  # spokes one multi-use join token may enroll
BULK_BODY_BYTES = 1 << 20  # an upload this large reads its body 256 KiB at a time
# What a call through a spoke may answer besides 404: its policy (403), its call slots
# (429), no live link (503), no answer in time (504).
SPOKE_ERRORS = (403, 429, 503, 504)
MAX_LOG_TAIL = 100_000  # what box.logs accepts (protocol/verbs.py BoxLogs)
ON_BOX = (400, *SPOKE_ERRORS)  # 400: not a box id (bx_ + 16 hex digits), or a bad parameter
BOX_PATH = (Param("id", {"type": "string", "pattern": v.BOX_ID_RE.pattern}, "the box",
                  where="path"),)


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
            web.post("/api/boxes/{id}/pause", self.box_pause),
            web.post("/api/boxes/{id}/resume", self.box_resume),
            web.get("/api/boxes/{id}/logs", self.box_logs),
            web.get("/api/boxes/{id}/stats", self.box_stats),
            web.post("/api/boxes/{id}/exec", self.box_exec),
            web.put("/api/boxes/{id}/file", self.box_put_file),
            web.get("/api/boxes/{id}/file", self.box_get_file),
        ]

    @operation("Health of the hub", tag="health", replies=(Reply(200, "always 200: "
               "`degraded` (with its reasons) when no spoke is connected or the default model "
               "is unreachable", m.Health),))
    async def healthz(self, request: web.Request) -> web.Response:
        """200 ``{"ok": true, "status": "ok"|"degraded", "reasons": [...],
        "spokes_connected": N}`` at once (hub/health.py). Pinned by
        tests/test_alerts_e2e.py::test_healthz_is_degraded_without_spokes_or_model."""
        return web.json_response(self.health.report())

    @operation("The hub's URL, certificate pin and version", tag="health",
               replies=(Reply(200, "the hub", m.Info),))
    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"url": self.public_url, "pin": self.pin, "version": self.registry.version}
        )

    # ---------------------------------------------------------------- tokens
    @operation("Create a join token", tag="tokens", body=m.TokenCreate,
               replies=(Reply(201, "the token, shown only here", m.TokenCreated),))
    async def token_create(self, request: web.Request) -> web.Response:
        body = await parsed_body(request, m.TokenCreate)
        name = body.name
        # fullmatch: the pattern's ``$`` also matches before a final newline, so ``match``
        # let "name\n" through. Pinned by tests/test_openapi_regressions.py::
        # test_names_with_a_newline_are_refused.
        if not v.SPOKE_NAME_RE.fullmatch(name):
            raise RemoteError(
                ErrorCode.INVALID,
                f"bad spoke name {name!r}: lowercase letters, digits and '-', max 63",
            )
        ttl = parse_ttl(body.ttl)
        if ttl > 30 * 86400:
            raise RemoteError(ErrorCode.INVALID, "ttl may be at most 30d: join tokens must expire")
        # ``uses``: a multi-use token for up to that many spokes named NAME-… (docs/api.md).
        # Pinned by tests/test_multi_use_tokens.py.
        uses = body.uses
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

    @operation("List join tokens", tag="tokens",
               replies=(Reply(200, "every token, with its state", list[m.Token]),))
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

    @operation("Revoke a join token", tag="tokens",
               replies=(Reply(200, "revoked (false: it was already)", m.Revoked),))
    async def token_revoke(self, request: web.Request) -> web.Response:
        token_id = request.match_info["id"]
        if await self.store.get_token(token_id) is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no token {token_id}")
        revoked = await self.store.revoke_token(token_id)
        if revoked:
            await self.store.audit("token.revoked", token_id, actor=actor(request), result="ok")
        return web.json_response({"id": token_id, "revoked": revoked})

    # -------------------------------------------------------------- api keys
    @operation("Create an API key", tag="api keys", body=m.ApiKeyCreate,
               replies=(Reply(201, "the key, shown only here", m.ApiKeyCreated),))
    async def apikey_create(self, request: web.Request) -> web.Response:
        body = await parsed_body(request, m.ApiKeyCreate)
        name = body.name
        if not 0 < len(name) <= 100:
            raise RemoteError(ErrorCode.INVALID, "name must be 1..100 characters")
        if not name.isprintable():  # it is printed by the CLI and shown on the dashboard
            raise RemoteError(ErrorCode.INVALID, "name must not contain control characters")
        try:  # admin by default, as every key was before roles existed
            role = roles.check_role(body.role)
        except ValueError as err:
            raise RemoteError(ErrorCode.INVALID, str(err)) from None
        key_id, key = new_id("key"), "shk_" + new_secret()
        await self.store.add_api_key(key_id, name, hash_secret(key), role)
        await self.store.audit("apikey.created", name, f"{key_id} role {role}", actor=actor(request), result="ok")
        return web.json_response({"key": key, "id": key_id, "name": name, "role": role},
                                 status=201)

    @operation("List API keys", tag="api keys",
               replies=(Reply(200, "every key (never the key itself)", list[m.ApiKey]),))
    async def apikey_list(self, request: web.Request) -> web.Response:
        return web.json_response(await self.store.list_api_keys())

    @operation("Revoke an API key", tag="api keys", description="Requests with it are "
               "refused at once.", replies=(Reply(200, "revoked", m.Revoked),))
    async def apikey_revoke(self, request: web.Request) -> web.Response:
        key_id = request.match_info["id"]
        if not await self.store.revoke_api_key(key_id):
            raise RemoteError(ErrorCode.NOT_FOUND, f"no active API key {key_id}")
        await self.store.audit("apikey.revoked", key_id, actor=actor(request), result="ok")
        return web.json_response({"id": key_id, "revoked": True})

    # ---------------------------------------------------------------- spokes
    @operation("List spokes", tag="spokes",
               replies=(Reply(200, "every enrolled spoke with its live state", list[m.Spoke]),))
    async def spoke_list(self, request: web.Request) -> web.Response:
        return web.json_response(await self.registry.spoke_summaries())

    @operation("Revoke a spoke", tag="spokes", description="Deletes its public key and "
               "closes its connection: it stops instead of reconnecting.",
               replies=(Reply(200, "revoked (false: it was already)", m.SpokeRevoked),))
    async def spoke_revoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if await self.store.get_spoke(name) is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no spoke {name!r}")
        revoked = await self.registry.revoke(name)
        if revoked:  # the registry records the revocation itself; this records who asked
            await self.store.audit("spoke.revoke", name, actor=actor(request), spoke=name,
                                   result="ok")
        return web.json_response({"name": name, "revoked": revoked})

    @operation("Round trips to a spoke", tag="spokes", body=m.PingBody, body_required=False,
               description="No-op calls through the live link, `concurrency` at a time.",
               replies=(Reply(200, "how long they took", m.Ping),), errors=SPOKE_ERRORS)
    async def spoke_ping(self, request: web.Request) -> web.Response:
        """No-op round trips through the live link, ``concurrency`` at a time: measures the
        protocol path itself (used by benchmarks and by operators checking a spoke's handlers)."""
        body = await parsed_body(request, m.PingBody)
        count = 1 if body.count is None else body.count  # never None: want's default
        concurrency = 1 if body.concurrency is None else body.concurrency
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
    @operation("Create a box", tag="boxes", body=m.BoxCreate,
               replies=(Reply(201, "the box, running", m.BoxCreated),), errors=(404, *SPOKE_ERRORS))
    async def box_create(self, request: web.Request) -> web.Response:
        body = await parsed_body(request, m.BoxCreate)
        params: dict[str, Any] = {"image": body.image, "network": bool(body.network)}
        if body.memory is not None:
            params["memory_bytes"] = parse_size(body.memory)
        if body.cpus is not None:
            params["cpus"] = body.cpus
        params.update({"user": body.user} if body.user is not None else {})
        if body.workspace is not None:
            params["workspace_bytes"] = parse_size(body.workspace)
        params["env"] = {str(k): str(v) for k, v in (body.env or {}).items()}
        box = await self.boxes.create(body.spoke, params)
        return web.json_response(box, status=201)

    @operation("List boxes", tag="boxes", query=(
        Param("spoke", description="only this spoke's"),
        Param("all", {"type": "string"}, "`1`: the hub's records merged with what each "
              "connected spoke reports (`on_spoke`, `note`)")),
        replies=(Reply(200, "live boxes, or with `all=1` every record",
                       list[m.InventoryBox] | list[m.Box]),), errors=(404,))
    async def box_list(self, request: web.Request) -> web.Response:
        if request.query.get("all", "").lower() in ("1", "true", "yes"):
            return web.json_response(await self.boxes.inventory(request.query.get("spoke")))
        return web.json_response(await self.boxes.list(request.query.get("spoke")))

    @operation("Destroy a box", tag="boxes",
               replies=(Reply(200, "gone (`removed` false: it was already)", m.BoxDestroyed),),
               path_params=BOX_PATH, errors=ON_BOX)
    async def box_destroy(self, request: web.Request) -> web.Response:
        result = await self.boxes.destroy(request.match_info["id"])
        return web.json_response(result)

    @operation("Pause a box", tag="boxes", description="Docker's freezer: every process in "
               "the box stops and its memory is kept; exec, files, PTYs and ports answer 409 "
               "until it is resumed.",
               replies=(Reply(200, "the box, paused", m.Box),), path_params=BOX_PATH,
               errors=ON_BOX)
    async def box_pause(self, request: web.Request) -> web.Response:
        return web.json_response(await self.boxes.pause(request.match_info["id"]))

    @operation("Resume a paused box", tag="boxes",
               replies=(Reply(200, "the box, running again", m.Box),), path_params=BOX_PATH,
               errors=ON_BOX)
    async def box_resume(self, request: web.Request) -> web.Response:
        return web.json_response(await self.boxes.pause(request.match_info["id"], resume=True))

    @operation("A box's logs", tag="boxes", query=(
        Param("tail", int_or_empty(1, MAX_LOG_TAIL), "the last N lines (default 200)"),),
        replies=(Reply(200, "the raw log bytes", {"type": "string", "format": "binary"},
                       OCTETS),), path_params=BOX_PATH, errors=ON_BOX)
    async def box_logs(self, request: web.Request) -> web.Response:
        # A bad tail is a 400 like every other bad parameter (it fell back to 200 silently,
        # and ``²`` passed isdigit() into a 500). Pinned by tests/test_openapi_regressions.py.
        tail = int_param(request, "tail", 200, 1, MAX_LOG_TAIL) or 200
        data = await self.boxes.logs(request.match_info["id"], tail)
        return web.Response(body=data, content_type="application/octet-stream")

    @operation("A box's live usage", tag="boxes",
               replies=(Reply(200, "memory, CPU and processes", m.BoxStats),),
               path_params=BOX_PATH, errors=ON_BOX)
    async def box_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await self.boxes.stats(request.match_info["id"]))

    @operation("Run a command in a box", tag="boxes", body=m.ExecBody,
               description="Output is streamed as it is produced; the command is killed when "
               "the caller goes away. NDJSON lines (output base64) by default; with `Accept: "
               f"{binary_exec.CONTENT_TYPE}` binary frames instead, the output raw: each frame "
               "is a kind byte (1 stdout, 2 stderr, 0 the end), a big-endian u32 length and "
               "that many bytes; the end frame's bytes are the exit (or error) line as JSON, "
               "exactly the NDJSON stream's last line (docs/api.md).",
               replies=(Reply(200, "NDJSON: output lines, then the exit line", m.ExecLine,
                              NDJSON),
                        Reply(200, "binary frames: output raw, then the exit line as JSON",
                              {"type": "string", "format": "binary"},
                              binary_exec.CONTENT_TYPE)),
               path_params=BOX_PATH, errors=ON_BOX)
    async def box_exec(self, request: web.Request) -> web.StreamResponse:
        """Answered in the format the caller accepts (NDJSON unless it asks for
        :data:`protocol.binary_exec.CONTENT_TYPE`). Pinned by tests/test_boxes_e2e.py (NDJSON)
        and tests/test_bulk_data.py (binary, 50 MiB)."""
        body = await parsed_body(request, m.ExecBody)
        params = self.boxes.exec_params(request.match_info["id"], {
            "cmd": body.cmd, "env": body.env or {}, "workdir": body.workdir,
            "timeout_s": body.timeout_s,
        })
        stream = self.boxes.exec(params)
        try:
            # Errors before any output become proper HTTP statuses; and the exec dies with
            # its caller (hub/disconnect.py), before and after the first output alike.
            first = await cancelled_on_disconnect(request, anext(stream))
            if binary_exec.CONTENT_TYPE in request.headers.get("Accept", ""):
                return await self._exec_binary(request, stream, first)
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

    async def _exec_binary(self, request: web.Request,
                           stream: AsyncIterator[tuple[str, Any]],
                           first: tuple[str, Any]) -> web.StreamResponse:
        """The binary frames of :mod:`protocol.binary_exec`: each chunk from the spoke is
        written raw behind a 5-byte header (two writes, no copy of the data)."""
        response = web.StreamResponse(headers={"Content-Type": binary_exec.CONTENT_TYPE})
        await response.prepare(request)
        try:
            item: tuple[str, Any] | None = first
            while item is not None:
                kind, value = item
                if kind == "exit":
                    await response.write(binary_exec.end_frame({"t": "exit", **value}))
                elif value:
                    await response.write(binary_exec.output_header(kind, len(value)))
                    await response.write(value)
                item = await cancelled_on_disconnect(request, anext(stream, None))
        except RemoteError as err:
            await response.write(binary_exec.end_frame(
                {"t": "error", "code": err.code.value, "message": err.message}))
        await response.write_eof()
        return response

    @operation("Upload a file into a box", tag="boxes", body={"type": "string",
               "format": "binary"}, body_content_type=OCTETS, query=(
        Param("path", {"type": "string", "minLength": 1}, "where: absolute, or relative to "
              "the box's working directory", required=True),
        Param("mode", {"type": "string", "pattern": "^[0-7]{3,4}$"}, "octal, default 644"),
        Param("parents", {"type": "string", "enum": ["0", "1", "false", "true"]},
              "create missing directories"),
        Param("into_dir_name", description="the file's name when `path` is a directory")),
        description="The raw body is the file; `Content-Length` is required.",
        replies=(Reply(200, "written", m.FileWritten),), path_params=BOX_PATH,
        errors=(*ON_BOX, 413))
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
            # Up to one link chunk (protocol.connection.Limits.chunk_bytes) at a time: the
            # driver sends a piece of half a chunk or more on as it is, without a copy.
            async for piece in request.content.iter_chunked(256 * 1024):
                yield piece

        if size >= BULK_BODY_BYTES:  # 256 KiB TLS reads for the body (hub/tls_reads.py)
            tls_reads.widen(request.transport)
        try:
            result = await self.boxes.put_file(
                request.match_info["id"], path, size, mode, source(),
                parents=_flag(request, "parents"),
                into_dir_name=request.query.get("into_dir_name") or None,
            )
        finally:
            tls_reads.narrow(request.transport)
        return web.json_response(result)

    @operation("Download a file from a box", tag="boxes", query=(
        Param("path", {"type": "string", "minLength": 1}, "absolute, or relative to the box's "
              "working directory",
              required=True),),
        replies=(Reply(200, "the file's bytes, streamed", {"type": "string",
                                                           "format": "binary"}, OCTETS),),
        path_params=BOX_PATH, errors=ON_BOX)
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
