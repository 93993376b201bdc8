"""One live spoke connection at the hub: the shared link driver plus what the hub knows of
the spoke (its declared labels and models, capacity, last heartbeat, relay token), how it is
answering (a bounded per-verb latency window, hub/latency.py), whether it has gone quiet
(stale), and, once closed, how it ended (a clean goodbye or not).

The I/O is protocol/link.py's :class:`~protocol.link.HubDriver` (the same driver the spoke
uses, so flushing, timers, heartbeats and chunking live in one place) over
:class:`AiohttpTransport`, the adapter from aiohttp's server WebSocket to the transport seam.
Pinned by tests/hub/ (over the in-memory pipe) and the end-to-end tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import BaseModel

from hub import metrics, tls_reads
from hub.latency import LatencyWindow
from protocol import messages
from protocol.hub_driver import HubDriver
from protocol.link import Ticker
from protocol.sides import HubConnection
from protocol.transport import Transport

log = logging.getLogger("spokehub.hub.link")
BULK_MESSAGE_BYTES = 64 * 1024  # a stream chunk this large means bulk data is flowing
BULK_LINGER_S = 5.0  # how long after the last one the link keeps its wide reads

class AiohttpTransport:
    """aiohttp's server WebSocket as a :class:`~protocol.transport.Transport`."""

    def __init__(self, socket: web.WebSocketResponse) -> None:
        self.socket = socket
        self._peer_close: tuple[int, str] | None = None
        self._wide_until: float | None = None  # reading 256 KiB at a time until then

    def _bulk(self, data: str | bytes) -> None:
        """Widen the TLS reads while stream chunks arrive (hub/tls_reads.py), narrow them
        at the first control frame :data:`BULK_LINGER_S` after the last one: an idle link
        keeps its small buffer (issue 9), a busy one reads 256 KiB at a time (issue 14)."""
        now = time.monotonic()
        if isinstance(data, bytes) and len(data) >= BULK_MESSAGE_BYTES:
            if self._wide_until is None:
                tls_reads.widen(getattr(getattr(self.socket, "_req", None), "transport", None))
            self._wide_until = now + BULK_LINGER_S
        elif self._wide_until is not None and now > self._wide_until:
            self._wide_until = None
            tls_reads.narrow(getattr(getattr(self.socket, "_req", None), "transport", None))

    async def send(self, frames: Sequence[str | bytes]) -> None:
        for frame in frames:
            if self.socket.closed:
                raise ConnectionError("the WebSocket is closed")
            if isinstance(frame, str):
                await self.socket.send_str(frame)
            else:  # a stream chunk (protocol/binary_frames.py): raw, no base64
                await self.socket.send_bytes(frame)

    async def receive(self) -> str | bytes | None:
        if self.socket.closed:
            return None
        msg = await self.socket.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            data: str | bytes = msg.data
            self._bulk(data)
            return data
        if msg.type == WSMsgType.CLOSE:
            self._peer_close = (int(msg.data or 0), str(msg.extra or ""))
        elif msg.type == WSMsgType.ERROR:
            self._peer_close = (1006, f"socket error: {self.socket.exception()}")
        return None

    async def close(self, code: int, reason: str) -> None:
        if not self.socket.closed:
            await self.socket.close(code=code, message=reason.encode()[:120])

    @property
    def closed(self) -> bool:
        return self.socket.closed

    @property
    def peer_close(self) -> tuple[int, str] | None:
        return self._peer_close


_CHILDREN: dict[tuple[str, str], tuple[Any, Any]] = {}  # (verb, outcome) -> the two series


def _observe(verb: str, outcome: str, seconds: float) -> None:
    """Count a call: the label lookups are made once per (verb, outcome), a bounded set."""
    series = _CHILDREN.get((verb, outcome))
    if series is None:
        series = _CHILDREN[(verb, outcome)] = (metrics.CALLS.labels(verb, outcome),
                                               metrics.CALL_SECONDS.labels(verb))
    series[0].inc()
    series[1].observe(seconds)


_BEAT = ("hub.heartbeat", messages.HubHeartbeat())


def _HUB_HEARTBEAT() -> tuple[str, BaseModel]:  # noqa: N802 - a constant's factory
    return _BEAT


CLOSE_NORMAL = 1000  # what a stopping spoke closes with ("spoke stopping", spoke/session.py)
StaleHook = Callable[["SpokeLink", bool], Awaitable[None]]


class SpokeLink(HubDriver):
    """The hub's end of one spoke's connection.

    Liveness, as the registry reports it (docs/operator-guide.md, "Spoke states"): a link is
    *stale* once nothing has been received for longer than two heartbeat intervals; the
    connection's own rule closes it as ``heartbeats missed`` after ``stale_after_s``. When it
    has closed, :meth:`gone_state` says ``left`` for a clean goodbye (the spoke closed with
    1000 before the hub closed anything) and ``lost`` for everything else. Pinned by
    tests/hub/test_fleet_memory.py."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        conn: HubConnection,
        on_notification: Callable[[SpokeLink, str, BaseModel], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        tick_s: float = 1.0,
        ticker: Ticker | None = None,
    ) -> None:
        super().__init__(conn, transport, name=f"spoke {name}", clock=clock, tick_s=tick_s,
                         heartbeat=_HUB_HEARTBEAT, on_notification=self._notified,
                         observe=self._observe_call, ticker=ticker)
        self.heartbeat_always = False  # any frame we sent recently proves we are alive
        # Ours only proves the hub is alive (the spoke's carry its load): every 40 % of the
        # spoke's stale limit is enough, two beats of margin, and a quarter fewer frames.
        self.heartbeat_s = max(conn.limits.heartbeat_s, 0.4 * conn.limits.stale_after_s)
        self.name = name
        self.wall_clock = wall_clock
        self.connected_at = wall_clock()
        self.last_heartbeat: messages.SpokeHeartbeat | None = None
        self.last_heartbeat_at: float | None = None  # wall clock, when that heartbeat came
        self.latency = LatencyWindow(clock)
        self.stale = False
        self.on_stale: StaleHook | None = None  # told when ``stale`` changes (the registry)
        self.closed_by_hub: str | None = None  # the reason, when the hub closed it first
        self._on_spoke_notification = on_notification
        # What the spoke declared at connect time; refreshed by heartbeats where they carry it.
        self.labels: list[str] = []
        self.models: list[str] = []
        self.max_workstreams = 0
        self.workstreams = 0  # busy ones, as the spoke's heartbeat says
        self.relay_token_hash = ""
        self.leaving = False  # it said spoke.leaving: no new work (hub/workstreams/moves.py)

    def _observe_call(self, verb: str, outcome: str, seconds: float) -> None:
        _observe(verb, outcome, seconds)
        self.latency.observe(verb, outcome, seconds)

    def silent_s(self) -> float:
        """Seconds since anything was received from the spoke (on the link's clock)."""
        return max(0.0, self.clock() - self.conn.last_received)

    def is_stale(self) -> bool:
        """Open, but nothing received for longer than two of the spoke's heartbeat intervals."""
        return not self.closed and self.silent_s() > 2 * self.conn.limits.heartbeat_s

    def gone_state(self) -> str:
        """How a closed link ended: ``left`` if the spoke said goodbye (close code 1000, and
        the hub had not closed it first), else ``lost`` (dropped, timed out, stale, or closed
        by the hub: replaced, shutting down)."""
        peer = self.transport.peer_close
        if self.closed_by_hub is None and peer is not None and peer[0] == CLOSE_NORMAL:
            return "left"
        return "lost"

    async def close(self, code: int, reason: str) -> None:
        if self.closed_by_hub is None and not self.closed:
            self.closed_by_hub = reason
        await super().close(code, reason)

    def tick_due(self) -> bool:
        return super().tick_due() or (not self.closed and self.is_stale() != self.stale)

    async def tick(self) -> None:
        """The driver's timers, then the stale check (every tick, so at most a tick late)."""
        await super().tick()
        stale = self.is_stale()
        if stale != self.stale and not self.closed:
            self.stale = stale
            if self.on_stale is not None:
                try:
                    await self.on_stale(self, stale)
                except Exception:  # the timers must outlive a failing hook (a closing store)
                    log.warning("stale hook of %s failed", self.name, exc_info=True)

    async def _notified(self, method: str, params: BaseModel) -> None:
        if isinstance(params, messages.SpokeHeartbeat):
            self.last_heartbeat = params
            self.last_heartbeat_at = self.wall_clock()
            self.workstreams = params.workstreams
            self.max_workstreams = params.max_workstreams or self.max_workstreams
        await self._on_spoke_notification(self, method, params)
