"""REST routes for workstreams and models; the live stream is NDJSON resumable by cursor."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from hub.events_api import resume_cursor, serve_sse
from hub.http_util import json_body, want
from hub.model_config import ModelsConfig
from hub.workstreams.service import WorkstreamService
from protocol.errors import ErrorCode, RemoteError


def _cursor(request: web.Request, name: str = "after") -> int:
    raw = request.query.get(name, "0")
    if not raw.isdigit():
        raise RemoteError(ErrorCode.INVALID, f"{name} must be a non-negative integer")
    return int(raw)


class WorkstreamApi:
    def __init__(self, service: WorkstreamService, models: Any) -> None:
        self.service = service
        self._models = models

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/models", self.models),
            web.post("/api/ws", self.create),
            web.get("/api/ws", self.list),
            web.get("/api/ws/{id}", self.get),
            web.get("/api/ws/{id}/events", self.events),
            web.get("/api/ws/{id}/stream", self.stream),
            web.post("/api/ws/{id}/messages", self.send),
            web.post("/api/ws/{id}/approvals/{call_id}", self.decide),
            web.post("/api/ws/{id}/cancel", self.cancel),
            web.post("/api/ws/{id}/close", self.close),
            web.get("/api/usage", self.usage),
        ]

    async def models(self, request: web.Request) -> web.Response:
        config: ModelsConfig = self._models()
        return web.json_response({"default": config.default, "fallback": list(config.fallback),
                                  "models": [m.public() for m in config.models.values()]})

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        row = await self.service.start(
            want(body, "message", str), spoke=want(body, "spoke", str, None), label=want(body, "label", str, None),
            model=want(body, "model", str, None), image=want(body, "image", str, None),
            auto_approve=want(body, "auto_approve", bool, False),
            owner=str(request.get("api_key", {}).get("id", "")),
            on_loss=want(body, "on_loss", str, "resume"))
        return web.json_response(row, status=201)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.list())

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.get(request.match_info["id"]))

    async def events(self, request: web.Request) -> web.Response:
        ws_id, after = request.match_info["id"], _cursor(request)
        wait = min(float(request.query.get("wait", "0") or 0), 60.0)
        if wait > 0:
            return web.json_response(await self.service.wait_events(ws_id, after, wait))
        return web.json_response(await self.service.events(ws_id, after))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Every event after the cursor, then live ones, one JSON object per line; a reader
        that reconnects with the last seq it saw loses and repeats nothing. With
        ``format=sse``, the same as Server-Sent Events (``id:`` = the seq, ``Last-Event-ID``
        honoured; hub/events_api.py), for the browser's EventSource. Pinned by
        tests/hub/test_fleet_memory.py::test_ws_stream_as_sse."""
        ws_id = request.match_info["id"]
        fmt = request.query.get("format", "ndjson")
        if fmt not in ("ndjson", "sse"):
            raise RemoteError(ErrorCode.INVALID, f"format must be ndjson or sse, got {fmt[:20]!r}")
        await self.service.get(ws_id)
        if fmt == "sse":
            start = resume_cursor(request)

            async def wait(cursor: int, timeout: float) -> list[dict[str, Any]]:
                return await self.service.wait_events(ws_id, cursor, timeout)

            return await serve_sse(request, start or 0, wait, lambda event: int(event["seq"]))
        after = _cursor(request)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            while True:
                events = await self.service.wait_events(ws_id, after, 15.0)
                if not events:
                    await response.write(b'{"keepalive":true}\n')
                for event in events:
                    await response.write(json.dumps(event).encode() + b"\n")
                    after = event["seq"]
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def send(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        return web.json_response(await self.service.send(request.match_info["id"], want(body, "message", str)))

    async def decide(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        result = await self.service.decide(request.match_info["id"], request.match_info["call_id"],
                                           want(body, "approve", bool), want(body, "reason", str, ""))
        return web.json_response(result)

    async def cancel(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.cancel(request.match_info["id"]))

    async def close(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.close(request.match_info["id"]))

    async def usage(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.db.usage_by_spoke())
