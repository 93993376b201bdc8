"""REST routes for workstreams and models; the live stream is NDJSON resumable by cursor."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from aiohttp import web

from hub.events_api import MAX_CURSOR, resume_cursor, serve_sse
from hub.http_util import is_digits, parsed_body
from hub.model_config import ModelsConfig
from hub.openapi import NDJSON, SSE, Param, Reply, operation
from hub.openapi.models import workstreams as m
from hub.openapi.spec import cursor
from hub.workstreams.service import WorkstreamService
from protocol.errors import ErrorCode, RemoteError


def _cursor(request: web.Request, name: str = "after") -> int:
    """A sequence number from the query (default 0); ``invalid`` for anything but ASCII
    digits of at most a 64-bit value (larger ones were a 500 from SQLite, and ``²`` one from
    ``int()``: tests/test_openapi_regressions.py)."""
    raw = request.query.get(name, "0")
    if not is_digits(raw) or len(raw) > 20 or int(raw) > MAX_CURSOR:
        raise RemoteError(ErrorCode.INVALID, f"{name} must be a non-negative integer")
    return int(raw)


def _seconds(request: web.Request, name: str, most: float) -> float:
    """A number of seconds from the query, at most ``most`` (negative: none); ``invalid`` for
    anything that is not a finite number. (``float()`` of it unchecked was a 500 for
    ``wait=null``, found by schemathesis: tests/test_openapi_regressions.py::
    test_a_bad_wait_is_a_400_not_a_500.)"""
    raw = request.query.get(name, "") or "0"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RemoteError(ErrorCode.INVALID,
                          f"{name} must be a number of seconds, got {raw[:20]!r}")
    return min(max(value, 0.0), most)


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

    @operation("The hub's models", tag="workstreams",
               replies=(Reply(200, "aliases, the default and the fallbacks", m.Models),))
    async def models(self, request: web.Request) -> web.Response:
        config: ModelsConfig = self._models()
        return web.json_response({"default": config.default, "fallback": list(config.fallback),
                                  "models": [model.public() for model in config.models.values()]})

    @operation("Start a workstream", tag="workstreams", body=m.WsStart,
               description="Queued at once, then leased to a spoke (the named one, one with "
               "the label, or any with room and the model).",
               replies=(Reply(201, "the workstream", m.WorkstreamStarted),), errors=(404,))
    async def create(self, request: web.Request) -> web.Response:
        body = await parsed_body(request, m.WsStart)
        row = await self.service.start(
            body.message, spoke=body.spoke, label=body.label, model=body.model, image=body.image,
            auto_approve=bool(body.auto_approve),
            owner=str(request.get("api_key", {}).get("id", "")),
            on_loss="resume" if body.on_loss is None else body.on_loss)
        return web.json_response(row, status=201)

    @operation("List workstreams", tag="workstreams",
               replies=(Reply(200, "the newest 500", m.Workstreams),))
    async def list(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.list())

    @operation("One workstream", tag="workstreams",
               replies=(Reply(200, "the workstream, with its pending approvals",
                              m.WorkstreamDetail),))
    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.get(request.match_info["id"]))

    @operation("A workstream's events", tag="workstreams", query=(
        cursor("the cursor: events with a larger seq (default 0)"),
        Param("wait", {"type": "number"}, "seconds to wait for one when there is none yet "
              "(at most 60; default 0)")),
        replies=(Reply(200, "at most 500 events", m.Events),), errors=(400,))
    async def events(self, request: web.Request) -> web.Response:
        ws_id, after = request.match_info["id"], _cursor(request)
        wait = _seconds(request, "wait", 60.0)
        if wait > 0:
            return web.json_response(await self.service.wait_events(ws_id, after, wait))
        return web.json_response(await self.service.events(ws_id, after))

    @operation("Follow a workstream's events", tag="workstreams", query=(
        cursor("the cursor (default 0)"),
        Param("format", {"type": "string", "enum": ["ndjson", "sse"]}, "default ndjson"),
        Param("Last-Event-ID", {"type": "string", "pattern": "^[0-9]{1,19}$"}, "SSE: the cursor "
              "an EventSource resends (wins over `after`)", where="header")),
        description="Every event after the cursor, then live ones, without end: NDJSON "
        "(`{\"keepalive\": true}` lines while quiet) or Server-Sent Events.",
        replies=(Reply(200, "NDJSON events, endless", m.Event, NDJSON),
                 Reply(200, "with `format=sse`: SSE, `id:` = the seq", {"type": "string"},
                       SSE)), errors=(400,))
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

    @operation("Send a message to a workstream", tag="workstreams", body=m.WsMessage,
               replies=(Reply(200, "the workstream, with the message's `message_seq`",
                              m.WorkstreamStarted),),
               errors=(400,))
    async def send(self, request: web.Request) -> web.Response:
        body = await parsed_body(request, m.WsMessage)
        return web.json_response(await self.service.send(request.match_info["id"], body.message))

    @operation("Approve or deny a tool call", tag="workstreams", body=m.Decision,
               replies=(Reply(200, "the decision", m.Decided),),
               errors=(400,))
    async def decide(self, request: web.Request) -> web.Response:
        body = await parsed_body(request, m.Decision)
        result = await self.service.decide(request.match_info["id"], request.match_info["call_id"],
                                           body.approve, body.reason or "")
        return web.json_response(result)

    @operation("Cancel a workstream's turn", tag="workstreams",
               replies=(Reply(200, "the workstream", m.WorkstreamDetail),), errors=(400,))
    async def cancel(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.cancel(request.match_info["id"]))

    @operation("Close a workstream", tag="workstreams", description="Ends it for good: "
               "its pending approvals are resolved and its box is freed.",
               replies=(Reply(200, "the workstream", m.WorkstreamDetail),), errors=(400,))
    async def close(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.close(request.match_info["id"]))

    @operation("Model tokens used", tag="workstreams",
               replies=(Reply(200, "by spoke and model", m.Usages),))
    async def usage(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.db.usage_by_spoke())
