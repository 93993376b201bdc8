"""One session with the hub over any transport: the handshake, then serving verbs.

The connector (spoke/connector.py) dials, checks the pin and wraps the socket in
:class:`WebsocketsTransport`; tests in tests/hub/ hand a :class:`Session` one end of the
in-memory pipe instead, so a real hub registry and this real dispatcher meet without sockets.
The I/O around the sans-I/O connection is protocol/link.py's :class:`SpokeDriver`, the same
driver the hub's side is built on. The handshake is a small dispatch table from event type to
handler; after it the driver serves each request in its own task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as SocketState

from protocol import events as ev
from protocol import messages
from protocol.connection import Limits
from protocol.errors import ErrorCode
from protocol.sides import SpokeConnection
from protocol.spoke_driver import CallIO, SpokeDriver
from protocol.tokens import JoinToken
from protocol.transport import Transport
from spoke.backoff import Backoff
from spoke.identity import HUB_CERT_FILE, Identity, SpokeState
from spoke.workstreams import HubAccess

if TYPE_CHECKING:
    from spoke.dispatcher import Dispatcher
    from spoke.workstreams import WorkstreamRunner

LEAVE_SETTLE_S = 0.5  # after the last running call, how long a leaving spoke waits for more
log = logging.getLogger("spokehub.spoke")


class Fatal(Exception):
    """The spoke must stop and not retry (rejected, revoked, wrong pin)."""


@dataclass
class SpokeRuntime:
    identity: Identity
    state: SpokeState
    dispatcher: Dispatcher
    version: str
    labels: tuple[str, ...] = ()
    token: JoinToken | None = None
    limits: Limits = field(default_factory=Limits)
    backoff: Backoff = field(default_factory=Backoff)
    on_connected: Callable[[str], None] | None = None  # the CLI's status line
    workstreams: WorkstreamRunner | None = None
    models: tuple[str, ...] = ()  # spoke-local model aliases to advertise
    hub_away: bool = False  # the hub said it is shutting down: retries stay quiet until it is back
    drain_s: float = 10.0  # a clean stop waits this long at most for running calls to end


class WebsocketsTransport:
    """The ``websockets`` client connection as a :class:`~protocol.transport.Transport`."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket

    async def send(self, frames: Sequence[str | bytes]) -> None:
        """``str`` goes as a text message, ``bytes`` (a stream chunk) as a binary one."""
        try:
            for frame in frames:
                await self.socket.send(frame)
        except ConnectionClosed as err:
            raise ConnectionError(str(err)) from None

    async def receive(self) -> str | bytes | None:
        try:
            return await self.socket.recv()
        except ConnectionClosed:
            return None

    async def close(self, code: int, reason: str) -> None:
        await self.socket.close(code, reason[:100])

    @property
    def closed(self) -> bool:
        return self.socket.state in (SocketState.CLOSING, SocketState.CLOSED)

    @property
    def peer_close(self) -> tuple[int, str] | None:
        rcvd = self.socket.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else None


class Session:
    """One connection's life: hello → auth → serve until it closes. :meth:`run` tells
    whether it authenticated (the backoff resets after a healthy session); it raises
    :class:`Fatal` when retrying would be wrong. Pinned by tests/protocol/test_link.py,
    tests/hub/test_registry_memory.py and tests/test_enrollment.py."""

    def __init__(self, rt: SpokeRuntime, transport: Transport, *,
                 clock: Callable[[], float] = time.monotonic, tick_s: float = 1.0) -> None:
        self.rt, self.transport = rt, transport
        self.conn = SpokeConnection(clock, rt.limits)
        self.driver = SpokeDriver(self.conn, transport, self._serve, name="the hub", clock=clock,
                                  tick_s=tick_s, on_notification=self._notified)
        self.authenticated = False
        self._handshake: dict[type[ev.Event], Callable[[Any], Awaitable[None]]] = {
            ev.HelloReceived: self._hello,
            ev.Authenticated: self._authenticated,
            ev.AuthRejected: self._rejected,
        }

    async def run(self, stop: asyncio.Event) -> bool:
        stopper = asyncio.create_task(stop.wait())
        main = asyncio.create_task(self._main())
        try:
            await asyncio.wait([main, stopper], return_when=asyncio.FIRST_COMPLETED)
            if stopper.done():
                await self._leave()
                await self.transport.close(1000, "spoke stopping")
                main.cancel()
            else:
                main.result()
        finally:
            if self.rt.workstreams is not None:
                await self.rt.workstreams.attach(None)
            stopper.cancel()
            for task in list(self.driver.tasks.values()):
                task.cancel()
        return self.authenticated

    async def _leave(self) -> None:
        """A clean stop: say ``spoke.leaving`` (the hub moves our workstreams at once and
        offers us nothing new), refuse new work, let the running calls end — the hub's
        ``ws.close`` for what it moved among them — for at most ``drain_s``, then the caller
        says goodbye (1000). Pinned by tests/test_work_survives.py::
        test_a_clean_stop_hands_back_its_workstream_and_finishes_its_exec."""
        if not self.authenticated or self.transport.closed:
            return
        runner = self.rt.workstreams
        self.rt.dispatcher.leaving = True
        interrupted = runner.busy_ids() if runner is not None else []
        try:
            await self.driver.notify("spoke.leaving", messages.SpokeLeaving(
                interrupted=interrupted, drain_s=self.rt.drain_s))
        except ConnectionError:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rt.drain_s
        quiet_since = loop.time()
        while loop.time() < deadline and not self.transport.closed:
            if self.driver.tasks:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= LEAVE_SETTLE_S:
                break  # nothing running, and the hub had time to hand its cleanup calls
            await asyncio.sleep(0.05)
        if self.driver.tasks:
            log.warning("stopping with %d call(s) still running after %.0fs", len(self.driver.tasks),
                        self.rt.drain_s)

    async def _main(self) -> None:
        refused = ""
        try:
            async with asyncio.timeout(self.rt.limits.handshake_timeout_s):
                while not self.authenticated:
                    await self._handshake_step(await self.driver.receive_events())
                    await self.driver.flush()
        except ConnectionError as err:
            refused = str(err)  # said below, with the hub's close reason if it gave one
        except TimeoutError:
            await self.transport.close(messages.CLOSE_PROTOCOL, "handshake timed out")
            raise ConnectionError("the hub did not complete the handshake in time") from None
        if self.authenticated:
            await self.driver.run()
        close = self.transport.peer_close
        if close is not None and close[0] in messages.FATAL_CLOSE_CODES:
            raise Fatal(f"the hub closed the connection: {close[1] or close[0]}")
        if close is not None and close[0] == messages.CLOSE_GOING_AWAY and self.authenticated:
            # An orderly hub stop or restart: one calm line, then the usual backoff finds it
            # again when it is back.
            log.info("the hub is shutting down; reconnecting when it is back")
            self.rt.hub_away = True
        if not self.authenticated:
            reason = close[1] if close and close[1] else refused
            raise ConnectionError("the hub closed the connection during the handshake"
                                  + (f": {reason}" if reason else ""))

    async def _handshake_step(self, events: list[ev.Event]) -> None:
        for event in events:
            handler = self._handshake.get(type(event))
            if handler is not None:
                await handler(event)
            else:
                await self.driver.handle([event])  # violations, stale

    # ------------------------------------------------------------- handshake
    async def _hello(self, hello: ev.HelloReceived) -> None:
        self.driver.batch = "batch" in hello.caps  # the hub reads several frames in one message
        common = set(hello.versions) & set(messages.SUPPORTED_VERSIONS)
        if not common:
            older = "spoke" if max(hello.versions, default=0) > max(messages.SUPPORTED_VERSIONS) else "hub"
            raise Fatal(
                f"no common protocol version (hub {list(hello.versions)}, "
                f"spoke {list(messages.SUPPORTED_VERSIONS)}): upgrade one side — the "
                f"{older} is the older one"
            )
        state = self.rt.state
        enroll = not state.enrolled
        key = self.rt.identity.key(create=enroll)
        token = self.rt.token if enroll else None
        if enroll and token is None:
            raise Fatal("this spoke is not enrolled: run 'spoke join TOKEN'")
        runner = self.rt.workstreams
        self.conn.send_auth(messages.AuthParams(
            protocol=max(common),
            mode="enroll" if enroll else "resume",
            name=state.name,
            public_key=Identity.public_b64(key),
            signature=Identity.sign(key, hello.challenge, state.name, state.pin),
            token_id=token.token_id if token else None,
            token_secret=token.secret if token else None,
            version=self.rt.version,
            labels=list(self.rt.labels),
            caps=["stream", "cancel", "workstreams", "batch"],
            max_workstreams=runner.max_workstreams if runner else 0,
            models=list(self.rt.models),
        ))

    async def _authenticated(self, event: ev.Authenticated) -> None:
        result = event.result
        assert isinstance(result, messages.AuthResult)  # the connection validated it
        self.authenticated = True
        self.rt.hub_away = False
        self.rt.backoff.connected()
        self.driver.heartbeat_s = result.heartbeat_s
        self.driver.heartbeat = self._heartbeat
        if not self.rt.state.enrolled:
            self.rt.state.enrolled = True
            self.rt.identity.save_state(self.rt.state)
        log.debug("connected to %s as %s", self.rt.state.hub_url, self.rt.state.name)
        if self.rt.workstreams is not None:
            cert = self.rt.identity.data_dir / HUB_CERT_FILE
            if self.rt.state.pin and cert.exists():
                ca_file: str | None = str(cert)
            else:  # a CA-verified hub: the same trust as the wss connection
                ca_file = os.environ.get("SSL_CERT_FILE") or None
            access = HubAccess(hub_url=self.rt.state.hub_url, relay_token=result.relay_token,
                               ca_file=ca_file)
            await self.rt.workstreams.attach(self.driver.notify, access)
        if self.rt.on_connected:
            self.rt.on_connected(self.rt.state.hub_url)

    async def _rejected(self, event: ev.AuthRejected) -> None:
        if event.error.code is ErrorCode.DENIED:
            raise Fatal(f"the hub refused this spoke: {event.error.message}")
        raise ConnectionError(event.error.message)

    # ------------------------------------------------------------- serving
    async def _serve(self, req: ev.RequestReceived, io: CallIO) -> BaseModel:
        return await self.rt.dispatcher.dispatch(req.verb, req.params, io)

    def _heartbeat(self) -> tuple[str, BaseModel]:
        runner = self.rt.workstreams
        return "spoke.heartbeat", messages.SpokeHeartbeat(
            running_calls=len(self.driver.tasks),
            workstreams=runner.busy() if runner else 0,
            max_workstreams=runner.max_workstreams if runner else 0)

    async def _notified(self, method: str, params: BaseModel) -> None:
        if isinstance(params, messages.HubGoodbye):
            self.rt.backoff.hub_said_goodbye(params.reconnect_within_s, time.monotonic())
            return
        if isinstance(params, messages.WsEventAck) and self.rt.workstreams is not None:
            self.rt.workstreams.acked(params)
