"""One live spoke connection at the hub: the shared link driver plus what the hub knows of
the spoke (its declared labels and models, capacity, last heartbeat, relay token).

The I/O is protocol/link.py's :class:`~protocol.link.HubDriver` (the same driver the spoke
uses, so flushing, timers, heartbeats and chunking live in one place) over
:class:`AiohttpTransport`, the adapter from aiohttp's server WebSocket to the transport seam.
Pinned by tests/hub/ (over the in-memory pipe) and the end-to-end tests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import WSMsgType, web
from pydantic import BaseModel

from hub import metrics
from protocol import messages
from protocol.link import HubDriver
from protocol.sides import HubConnection
from protocol.transport import Transport


class AiohttpTransport:
    """aiohttp's server WebSocket as a :class:`~protocol.transport.Transport`."""

    def __init__(self, socket: web.WebSocketResponse) -> None:
        self.socket = socket
        self._peer_close: tuple[int, str] | None = None

    async def send(self, frames: Sequence[str]) -> None:
        for frame in frames:
            if self.socket.closed:
                raise ConnectionError("the WebSocket is closed")
            await self.socket.send_str(frame)

    async def receive(self) -> str | bytes | None:
        if self.socket.closed:
            return None
        msg = await self.socket.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            data: str | bytes = msg.data
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


def _observe(verb: str, outcome: str, seconds: float) -> None:
    metrics.CALLS.labels(verb, outcome).inc()
    metrics.CALL_SECONDS.labels(verb).observe(seconds)


class SpokeLink(HubDriver):
    """The hub's end of one spoke's connection."""

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
    ) -> None:
        super().__init__(conn, transport, name=f"spoke {name}", clock=clock, tick_s=tick_s,
                         heartbeat=lambda: ("hub.heartbeat", messages.HubHeartbeat()),
                         on_notification=self._notified, observe=_observe)
        self.name = name
        self.connected_at = wall_clock()
        self.last_heartbeat: messages.SpokeHeartbeat | None = None
        self._on_spoke_notification = on_notification
        # What the spoke declared at connect time; refreshed by heartbeats where they carry it.
        self.labels: list[str] = []
        self.models: list[str] = []
        self.max_workstreams = 0
        self.workstreams = 0  # busy ones, as the spoke's heartbeat says
        self.relay_token_hash = ""

    async def _notified(self, method: str, params: BaseModel) -> None:
        if isinstance(params, messages.SpokeHeartbeat):
            self.last_heartbeat = params
            self.workstreams = params.workstreams
            self.max_workstreams = params.max_workstreams or self.max_workstreams
        await self._on_spoke_notification(self, method, params)
