"""Dials the hub, proves the spoke's identity, serves calls, reconnects.

The spoke always dials out (no open port). Before anything secret is sent, the hub's
certificate is checked against the pin from the join token; a mismatch, a rejected identity or
a revocation stops the spoke for good, while any other failure reconnects with jittered
exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from protocol import events as ev
from protocol import messages
from protocol.connection import Connection, Limits, Role
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import JoinToken, pins_match
from protocol.verbs import VERBS
from spoke.backoff import Backoff
from spoke.dispatcher import Dispatcher
from spoke.identity import HUB_CERT_FILE, Identity, SpokeState
from spoke.workstreams import HubAccess, WorkstreamRunner

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
    on_connected: Any = None  # optional callable(str) for the CLI's status line
    workstreams: WorkstreamRunner | None = None
    models: tuple[str, ...] = ()  # spoke-local model aliases to advertise
    hub_away: bool = False  # the hub said it is shutting down: retries stay quiet until it is back


def _ws_url(hub_url: str) -> str:
    if hub_url.startswith("https://"):
        return "wss://" + hub_url[len("https://") :] + "/spoke/connect"
    return "ws://" + hub_url[len("http://") :] + "/spoke/connect"


async def run(rt: SpokeRuntime, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set; raises :class:`Fatal` when retrying would be wrong."""
    while not stop.is_set():
        started = time.monotonic()
        authenticated = False
        failure = ""
        try:
            authenticated = await _session(rt, stop)
        except Fatal:
            raise
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as err:
            failure = str(err) or type(err).__name__
        if stop.is_set():
            return
        if authenticated:
            rt.backoff.session_ended(time.monotonic() - started)
        delay = rt.backoff.next_delay()
        if rt.hub_away:  # the hub said it is going away: failures are expected, log them quietly
            log.debug("hub not back yet (%s); retrying in %.1fs", failure or "closed", delay)
        else:
            if failure:
                log.warning("connection to %s failed: %s", rt.state.hub_url, failure)
            log.info("reconnecting in %.1fs", delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _session(rt: SpokeRuntime, stop: asyncio.Event) -> bool:
    url = _ws_url(rt.state.hub_url)
    ctx: ssl.SSLContext | None = None
    pinned = url.startswith("wss://") and bool(rt.state.pin)
    if pinned:
        # Trust comes from the pin, not from a CA: verification is done by hand below.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif url.startswith("wss://"):
        # No pin: a hub behind a TLS proxy with a CA-issued certificate (full verification,
        # hostname included; SSL_CERT_FILE adds a private CA).
        ctx = ssl.create_default_context()
    try:
        return await _connected_session(rt, stop, url, ctx, pinned)
    except ssl.SSLCertVerificationError as err:
        raise Fatal(f"the hub's TLS certificate is not trusted ({err.verify_message}); its join "
                    "token has no pin, so it must carry a certificate your CAs accept") from None


async def _connected_session(rt: SpokeRuntime, stop: asyncio.Event, url: str,
                             ctx: ssl.SSLContext | None, pinned: bool) -> bool:
    async with websockets.connect(
        url,
        ssl=ctx,
        max_size=rt.limits.max_frame_bytes * 4,
        open_timeout=10,
        ping_interval=None,
        close_timeout=2,
        compression=None,
    ) as ws:
        if pinned:
            der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            if not pins_match(rt.state.pin, der or b""):
                raise Fatal(
                    f"the hub's TLS certificate does not match the pin {rt.state.pin[:23]}…: "
                    "refusing to talk to it (wrong token, or someone in the middle)"
                )
            _save_hub_cert(rt, der)
        session = _Session(rt, ws)
        return await session.run(stop)


def _save_hub_cert(rt: SpokeRuntime, der: bytes | None) -> None:
    """Keep the pinned certificate as a PEM trust anchor, so model calls through the hub's
    relay (made by the official SDKs over their own HTTP clients) verify exactly this cert."""
    if not der:
        return
    path = rt.identity.data_dir / HUB_CERT_FILE
    pem = ssl.DER_cert_to_PEM_cert(der)
    if not path.exists() or path.read_text() != pem:
        path.write_text(pem)


class _Session:
    def __init__(self, rt: SpokeRuntime, ws: ClientConnection) -> None:
        self.rt, self.ws = rt, ws
        self.conn = Connection(Role.SPOKE, clock=time.monotonic, limits=rt.limits)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.uploads: dict[int, asyncio.Queue[tuple[int, bytes, bool]]] = {}
        self.windows: dict[int, asyncio.Event] = {}
        self.write_lock = asyncio.Lock()
        self.authenticated = False
        self.heartbeat_s = rt.limits.heartbeat_s

    async def flush(self) -> None:
        async with self.write_lock:
            for frame in self.conn.data_to_send():
                await self.ws.send(frame)

    async def _notify(self, method: str, params: Any) -> None:
        self.conn.notify(method, params)
        await self.flush()

    async def run(self, stop: asyncio.Event) -> bool:
        stopper = asyncio.create_task(stop.wait())
        timers = asyncio.create_task(self._timers())
        try:
            reader = asyncio.create_task(self._read())
            await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
            if stopper.done():
                await self.ws.close(1000, "spoke stopping")
                reader.cancel()
            else:
                reader.result()
        finally:
            if self.rt.workstreams is not None:
                await self.rt.workstreams.attach(None)
            stopper.cancel()
            timers.cancel()
            for task in self.tasks.values():
                task.cancel()
        return self.authenticated

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                await self._handle(self.conn.receive_data(message))
                await self.flush()
        except ConnectionClosed:
            pass
        close = self.ws.protocol.close_rcvd
        if close is not None and close.code in messages.FATAL_CLOSE_CODES:
            raise Fatal(f"the hub closed the connection: {close.reason or close.code}")
        if close is not None and close.code == messages.CLOSE_GOING_AWAY and self.authenticated:
            # An orderly hub stop or restart: one calm line, then the usual backoff finds it
            # again when it is back.
            log.info("the hub is shutting down; reconnecting when it is back")
            self.rt.hub_away = True
        if not self.authenticated:
            raise ConnectionError(
                f"the hub closed the connection during the handshake"
                f"{': ' + close.reason if close and close.reason else ''}"
            )

    async def _handle(self, events: list[ev.Event]) -> None:
        for event in events:
            if isinstance(event, ev.HelloReceived):
                self._auth(event)
            elif isinstance(event, ev.Authenticated):
                self.authenticated = True
                self.rt.hub_away = False
                self.heartbeat_s = float(getattr(event.result, "heartbeat_s", self.heartbeat_s))
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
                    access = HubAccess(hub_url=self.rt.state.hub_url,
                                       relay_token=str(getattr(event.result, "relay_token", "")),
                                       ca_file=ca_file)
                    await self.rt.workstreams.attach(self._notify, access)
                if self.rt.on_connected:
                    self.rt.on_connected(self.rt.state.hub_url)
            elif isinstance(event, ev.AuthRejected):
                if event.error.code is ErrorCode.DENIED:
                    raise Fatal(f"the hub refused this spoke: {event.error.message}")
                raise ConnectionError(event.error.message)
            elif isinstance(event, ev.RequestReceived):
                if VERBS[event.verb].stream == "up":  # chunks may arrive before the handler reads
                    self.uploads[event.call_id] = asyncio.Queue()
                self.tasks[event.call_id] = asyncio.create_task(self._serve(event))
            elif isinstance(event, ev.CancelReceived):
                task = self.tasks.get(event.call_id)
                if task is not None:
                    task.cancel()
            elif isinstance(event, ev.ChunkReceived):
                queue = self.uploads.get(event.call_id)
                if queue is not None:
                    queue.put_nowait((event.seq, event.data, event.eof))
            elif isinstance(event, ev.WindowOpened):
                window = self.windows.get(event.call_id)
                if window is not None:
                    window.set()
            elif isinstance(event, ev.NotificationReceived):
                if isinstance(event.params, messages.WsEventAck) and self.rt.workstreams is not None:
                    self.rt.workstreams.acked(event.params)
            elif isinstance(event, ev.ProtocolViolation):
                log.warning("protocol violation from the hub: %s", event.message)
                if event.fatal:
                    await self.ws.close(messages.CLOSE_PROTOCOL, event.message[:100])
            elif isinstance(event, (ev.PeerStale, ev.HandshakeTimedOut)):
                log.warning("the hub went silent: reconnecting")
                await self.ws.close(messages.CLOSE_STALE, "hub heartbeats missed")

    def _auth(self, hello: ev.HelloReceived) -> None:
        common = set(hello.versions) & set(messages.SUPPORTED_VERSIONS)
        if not common:
            raise Fatal(
                f"no common protocol version (hub {list(hello.versions)}, "
                f"spoke {list(messages.SUPPORTED_VERSIONS)}): upgrade one side"
            )
        state = self.rt.state
        key = self.rt.identity.key(create=not state.enrolled)
        enroll = not state.enrolled
        token = self.rt.token if enroll else None
        if enroll and token is None:
            raise Fatal("this spoke is not enrolled: run 'spoke join TOKEN'")
        params = messages.AuthParams(
            protocol=max(common),
            mode="enroll" if enroll else "resume",
            name=state.name,
            public_key=Identity.public_b64(key),
            signature=Identity.sign(key, hello.challenge, state.name, state.pin),
            token_id=token.token_id if token else None,
            token_secret=token.secret if token else None,
            version=self.rt.version,
            labels=list(self.rt.labels),
            caps=["stream", "cancel", "workstreams"],
            max_workstreams=self.rt.workstreams.max_workstreams if self.rt.workstreams else 0,
            models=list(self.rt.models),
        )
        self.conn.send_auth(params)

    async def _timers(self) -> None:
        last_beat = 0.0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.authenticated and now - last_beat >= self.heartbeat_s:
                last_beat = now
                runner = self.rt.workstreams
                self.conn.notify("spoke.heartbeat", messages.SpokeHeartbeat(
                    running_calls=len(self.tasks),
                    workstreams=runner.busy() if runner else 0,
                    max_workstreams=runner.max_workstreams if runner else 0))
            await self._handle(self.conn.check_timers())
            await self.flush()

    async def _serve(self, req: ev.RequestReceived) -> None:
        call_id = req.call_id
        io = _CallIO(self, call_id)
        try:
            remaining = max(0.0, req.deadline - time.monotonic())
            async with asyncio.timeout(remaining):
                result = await self.rt.dispatcher.dispatch(req.verb, req.params, io)
            self.conn.send_result(call_id, result)
        except RemoteError as err:
            self.conn.send_error(call_id, err)
        except TimeoutError:
            self.conn.send_error(
                call_id,
                RemoteError(ErrorCode.TIMEOUT, f"{req.verb}: deadline exceeded on the spoke"),
            )
        except asyncio.CancelledError:
            self.conn.send_error(
                call_id, RemoteError(ErrorCode.CANCELLED, f"{req.verb}: cancelled")
            )
        except Exception as err:  # a bug must answer the call, not hang it
            log.exception("%s failed", req.verb)
            self.conn.send_error(
                call_id, RemoteError(ErrorCode.INTERNAL, f"{req.verb}: {type(err).__name__}: {err}")
            )
        finally:
            self.tasks.pop(call_id, None)
            self.uploads.pop(call_id, None)
            self.windows.pop(call_id, None)
            with contextlib.suppress(ConnectionClosed):
                await self.flush()


class _CallIO:
    def __init__(self, session: _Session, call_id: int) -> None:
        self.session, self.call_id = session, call_id

    async def send(self, stream: str, data: bytes, eof: bool = False) -> None:
        s = self.session
        window = s.windows.setdefault(self.call_id, asyncio.Event())
        while not s.conn.send_chunk(self.call_id, stream, data, eof):
            window.clear()
            await window.wait()
        await s.flush()

    async def upload(self) -> AsyncIterator[bytes]:
        s = self.session
        queue = s.uploads.setdefault(self.call_id, asyncio.Queue())
        while True:
            seq, data, eof = await queue.get()
            s.conn.ack(self.call_id, seq)
            await s.flush()
            yield data
            if eof:
                return
