"""The events timeline (``GET /api/events``, ``GET /api/events/stream``) and the
Server-Sent Events framing shared with one workstream's stream (``/api/ws/{id}/stream?format=sse``).

The timeline is the audit table read by its autoincrement id (hub/store/audit.py): joins,
losses and clean leaves, stale spokes, revocations, errors, approvals requested and decided,
tokens and keys created and revoked — every row says who acted (``actor``, empty for what the
hub itself observed). A page reads the tail with ``GET /api/events``, then follows
``/api/events/stream?after=LAST`` with ``EventSource``; if SSE is unavailable it polls
``GET /api/events?after=LAST``. Either way the id is the cursor, so nothing is lost or shown
twice across a reconnect (the browser resends the last ``id:`` it saw as ``Last-Event-ID``).

Streams wait on the store's append wake-up (``Store.wait_audit``), bounded by the 15-second
keepalive: no reader polls the database. Routes are documented in docs/api.md ("Fleet, events
and history"). Pinned by tests/hub/test_fleet_memory.py (framing, Last-Event-ID) and
tests/test_fleet_api.py (a join delivered live, a resume without repeats).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.http_util import is_digits
from hub.openapi import SSE, Param, Reply, int_or_empty, operation
from hub.openapi.models import fleet as m
from hub.store import Store
from protocol.errors import ErrorCode, RemoteError

KEEPALIVE_S = 15.0
MAX_EVENTS = 1000
MAX_CURSOR = 2**63 - 1  # the largest id SQLite stores (INTEGER is 64-bit signed)
# The audit filters: 1..200 printable characters (the pattern keeps out control characters).
FILTER = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"^[^\x00-\x1f\x7f]+$"}
STREAM_PAGE = 500
RETRY_MS = 3000  # what EventSource waits before reconnecting

Wait = Callable[[int, float], Awaitable[list[dict[str, Any]]]]


def int_param(request: web.Request, name: str, default: int | None, low: int = 0,
              high: int | None = None) -> int | None:
    """A non-negative integer query parameter in ``[low, high]`` (``high`` at most
    :data:`MAX_CURSOR`: larger ids reach no row, and SQLite refused them with a 500 that
    schemathesis found); ``invalid`` otherwise. Pinned by tests/hub/test_fleet_memory.py::
    test_events_are_read_by_cursor and tests/test_openapi_regressions.py."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not is_digits(raw) or len(raw) > 20 or not low <= int(raw) <= (high or MAX_CURSOR):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise RemoteError(ErrorCode.INVALID, f"{name} must be an integer {bound}, got {raw[:20]!r}")
    return int(raw)


def resume_cursor(request: web.Request, name: str = "after") -> int | None:
    """Where a stream resumes: ``Last-Event-ID`` (what a reconnecting EventSource sends) wins
    over the ``after`` query parameter; None when neither is given. Pinned by
    tests/hub/test_fleet_memory.py::test_event_stream_sse and ::test_ws_stream_as_sse."""
    last = request.headers.get("Last-Event-ID", "").strip()
    if last:
        if not is_digits(last) or len(last) > 20 or int(last) > MAX_CURSOR:
            raise RemoteError(ErrorCode.INVALID, f"Last-Event-ID must be an integer, got {last[:20]!r}")
        return int(last)
    return int_param(request, name, None)


def sse_frame(event_id: int, data: Any) -> bytes:
    """One SSE event: ``id: N`` and the JSON on one ``data:`` line (JSON text never holds a
    raw newline), ended by a blank line. No ``event:`` field, so ``onmessage`` gets it.
    Pinned by tests/hub/test_fleet_memory.py::test_event_stream_sse."""
    return f"id: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def serve_sse(request: web.Request, after: int, wait: Wait, id_of: Callable[[dict[str, Any]], int],
                    *, keepalive_s: float = KEEPALIVE_S,
                    stopping: Callable[[], bool] = lambda: False) -> web.StreamResponse:
    """Stream ``wait(after, timeout)``'s items as SSE from cursor ``after``: each with
    ``id: id_of(item)``, a ``: keepalive`` comment after ``keepalive_s`` without one, until
    the client goes or ``stopping()`` (hub shutdown) says so. Pinned by
    tests/hub/test_fleet_memory.py::test_event_stream_sse."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})  # nginx and friends: do not hold the stream back
    await response.prepare(request)
    try:
        await response.write(f"retry: {RETRY_MS}\n: stream from {after}\n\n".encode())
        while not stopping() and not _gone(request):
            items = await wait(after, keepalive_s)
            if stopping():
                break
            if not items:
                await response.write(b": keepalive\n\n")
            for item in items:
                await response.write(sse_frame(id_of(item), item))
                after = id_of(item)
    except ConnectionResetError:  # the client went away mid-write
        pass
    return response


class EventsApi:
    """The timeline routes, over the store's audit table."""

    def __init__(self, store: Store, keepalive_s: float = KEEPALIVE_S) -> None:
        self.store, self.keepalive_s = store, keepalive_s
        self.stopping = False

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/events", self.events),
            web.get("/api/events/stream", self.stream),
            web.get("/api/audit", self.audit),
        ]

    def close(self) -> None:
        """Hub shutdown: end every open stream now (each is woken and returns), so the stop
        does not wait for them. Pinned by tests/hub/test_fleet_memory.py::test_event_stream_sse."""
        self.stopping = True
        self.store.wake_audit_readers()

    @operation("Read the events timeline", tag="events", query=(
        Param("after", int_or_empty(0), "the cursor: events with a larger id; without it, "
              "the newest `limit`"),
        Param("limit", int_or_empty(1, MAX_EVENTS), "default 100")),
        replies=(Reply(200, "events oldest first, and the next cursor", m.Events),),
        errors=(400,))
    async def events(self, request: web.Request) -> web.Response:
        """``{"events": [...], "last": ID}``: after ``after``, or the newest ``limit``
        without it. ``last`` is the cursor for the next call (the last id returned, or
        ``after`` when nothing was newer). Pinned by tests/hub/test_fleet_memory.py::
        test_events_are_read_by_cursor."""
        after = int_param(request, "after", None)
        limit = int_param(request, "limit", 100, 1, MAX_EVENTS) or 100
        if after is None:
            rows = await self.store.audit_tail(limit)
            last = rows[-1]["id"] if rows else 0
        else:
            rows = await self.store.audit_after(after, limit)
            last = rows[-1]["id"] if rows else after
        return web.json_response({"events": rows, "last": last})

    @operation("Follow the events timeline", tag="events", query=(
        Param("after", int_or_empty(0), "the cursor; default: from now"),
        Param("Last-Event-ID", {"type": "string", "pattern": "^[0-9]{1,19}$"}, "the cursor an "
              "EventSource resends (wins over `after`)", where="header")),
        description="Server-Sent Events without end: `id:` is the event's id, `data:` the "
        "event; a `: keepalive` comment after 15 s without one.",
        replies=(Reply(200, "SSE, endless", {"type": "string"}, SSE),), errors=(400,))
    async def stream(self, request: web.Request) -> web.StreamResponse:
        """SSE from ``Last-Event-ID`` or ``after``; without either, from now on. Pinned by
        tests/hub/test_fleet_memory.py::test_event_stream_sse and
        tests/test_fleet_api.py::test_events_stream_delivers_a_join_live_and_resumes."""
        after = resume_cursor(request)
        if after is None:
            after = await self.store.audit_last_id()

        async def wait(cursor: int, timeout: float) -> list[dict[str, Any]]:
            return await self.store.wait_audit(cursor, timeout, STREAM_PAGE)

        return await serve_sse(request, after, wait, lambda row: int(row["id"]),
                               keepalive_s=self.keepalive_s, stopping=lambda: self.stopping)

    @operation("Read the audit log", tag="events", query=(
        Param("limit", int_or_empty(1, MAX_EVENTS), "default 100"),
        Param("before", int_or_empty(1), "page back: the `next_before` of the previous page"),
        Param("spoke", FILTER, "only rows of this spoke"),
        Param("actor", FILTER, "only rows by `user:NAME` or `key:KEY_ID`"),
        Param("kind", FILTER, "only this kind (`box.exec`), or a family (`box.*`)")),
        replies=(Reply(200, "rows newest first", m.Audit),), errors=(400,))
    async def audit(self, request: web.Request) -> web.Response:
        """``{"audit": [...], "next_before": ID|null}``: the audit log newest first, filtered
        by ``spoke``, ``actor`` (``user:NAME``, ``key:KEY_ID``) and ``kind`` (``box.exec``,
        or ``box.*``); ``before`` pages back (pass the ``next_before`` of the last page).
        Pinned by tests/test_audit.py."""
        limit = int_param(request, "limit", 100, 1, MAX_EVENTS) or 100
        before = int_param(request, "before", None, 1)
        filters = {}
        for name in ("spoke", "actor", "kind"):
            value = request.query.get(name)
            if value is not None:
                if not value or len(value) > 200 or not value.isprintable():
                    raise RemoteError(ErrorCode.INVALID, f"{name} must be 1..200 printable characters")
                filters[name] = value
        rows = await self.store.recent_audit(limit, before=before, **filters)
        more = len(rows) == limit and rows[-1]["id"] > 1
        return web.json_response({"audit": rows, "next_before": rows[-1]["id"] if more else None})
