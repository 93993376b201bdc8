"""The registry of spokes: the ``/spoke/connect`` handshake, identity checks, live links.

Enrollment takes a one-time join token atomically and binds the spoke's public key; every
later connection proves possession of the private key by signing a fresh challenge bound to
this hub's certificate pin. The hub holds no secret that could impersonate a spoke.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ctypes
import functools
import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel

from hub import metrics
from hub.cluster.holding import ClusterHolding
from hub.cluster.links import RemoteLinks
from hub.enroll_throttle import RejectionThrottle
from hub.spoke_calls import SpokeCalls
from hub.spoke_link import AiohttpTransport, SpokeLink
from hub.spoke_views import SpokeViews
from hub.store import Store
from protocol import events as ev
from protocol import messages
from protocol import verbs as v
from protocol.compat import spoke_refusal
from protocol.connection import Limits
from protocol.errors import ErrorCode, RemoteError
from protocol.hub_driver import HubDriver
from protocol.link import Ticker
from protocol.sides import HubConnection
from protocol.tokens import auth_message, hash_secret, new_secret, secret_matches
from protocol.transport import Transport

log = logging.getLogger("spokehub.hub.registry")


LAST_SEEN_FLUSH_S = 10.0


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to do
        return None


def release_free_memory() -> None:
    """Give heap memory freed since the last call back to the system (glibc's
    ``malloc_trim``): a storm of TLS handshakes at a restart leaves megabytes freed but kept,
    and a hub holding thousands of spokes would otherwise show that peak as its size for good."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


UNKNOWN_IDENTITY = ("this spoke's identity is not known to this hub (it is not enrolled here, "
                    "or was enrolled with another key): enroll it again with a new join token")


class Rejected(Exception):
    def __init__(self, message: str, code: int = messages.CLOSE_REJECTED) -> None:
        super().__init__(message)
        self.close_code = code


class Registry(SpokeViews, ClusterHolding):
    def __init__(self, store: Store, pin: str, limits: Limits, version: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, tick_s: float = 1.0,
                 throttle: RejectionThrottle | None = None) -> None:
        self.store = store
        # Rejected handshakes per address: throttled, and folded in the audit log.
        self.throttle = throttle or RejectionThrottle(clock=clock)
        self.clock, self.wall_clock, self.tick_s = clock, wall_clock, tick_s
        self.ticker = Ticker(tick_s)  # one timer task for every link (protocol/link.py)
        self.pin = pin
        self.limits = limits
        self.version = version
        self.links: dict[str, SpokeLink] = {}
        # The cluster (hub/cluster/): this hub's id, and the spokes other hubs hold, callable
        # through them. A hub alone keeps ``local`` and an empty view.
        self.hub_id = "local"
        self.holder_ttl_s = 6.0
        self.remote: RemoteLinks[SpokeCalls] = RemoteLinks()
        self._flushed: dict[str, float] = {}  # last_seen written per spoke (flush_last_seen)
        self._relay_tokens: dict[str, str] = {}  # sha256(token) -> spoke name, live sessions only
        # Other services (workstreams) hook connection changes and spoke notifications here.
        self.on_connected: list[Callable[[SpokeLink], Awaitable[None]]] = []
        self.on_disconnected: list[Callable[[SpokeLink], Awaitable[None]]] = []
        self.on_notification: dict[str, Callable[[SpokeLink, BaseModel], Awaitable[None]]] = {}
        # Handler tasks of live links, so shutdown can wait for their bookkeeping.
        self._handlers: set[asyncio.Task[Any]] = set()
        self._checks: set[asyncio.Task[None]] = set()  # check_holder tasks

    # ------------------------------------------------------------- questions
    def local(self, name: str) -> SpokeLink | None:
        """The open link of spoke ``name`` on this hub, or None (a closed link still in the
        table counts as not connected). Pinned by
        tests/hub/test_registry_memory.py::test_revoke_closes_the_link_and_the_spoke_stops_for_good."""
        link = self.links.get(name)
        return link if link is not None and not link.closed else None

    def live(self, name: str) -> SpokeCalls | None:
        """How to call spoke ``name``: its link here, or through the hub of the cluster that
        holds it (hub/cluster/links.py), or None when no hub does. Pinned by
        tests/hub/test_registry_memory.py and tests/test_multihub.py."""
        link = self.local(name)
        if link is not None:
            return link
        remote = self.remote.get(name)
        return remote if remote is not None and not remote.closed else None

    def local_links(self) -> list[SpokeLink]:
        """Every open link on this hub, in name order."""
        return [link for _name, link in sorted(self.links.items()) if not link.closed]

    def live_links(self) -> list[SpokeCalls]:
        """Every spoke some hub of the cluster holds, in name order (this hub's links first
        when both know one): what routing and the box listing iterate. Pinned by
        tests/hub/test_workstreams_memory.py::
        test_generic_work_goes_to_the_least_loaded_spoke_and_queues_with_a_reason."""
        links: dict[str, SpokeCalls] = {name: link for name, link in self.links.items()
                                        if not link.closed}
        for link in self.remote.links():
            if link.name not in links and not link.closed:
                links[link.name] = link
        return [links[name] for name in sorted(links)]

    def link(self, name: str) -> SpokeCalls:
        """The open link of spoke ``name``, or an ``unavailable`` error naming it. Pinned by
        tests/hub/test_registry_memory.py::test_box_verbs_end_to_end_over_the_pipe."""
        link = self.live(name)
        if link is None:
            raise RemoteError(ErrorCode.UNAVAILABLE, f"spoke {name!r} is not connected")
        return link

    def spoke_for_relay_token(self, token: str) -> str | None:
        """The connected spoke a model-relay token was issued to (per session, hashed), or
        None: a token dies with its session. Pinned by
        tests/test_workstreams_e2e.py::test_multi_step_task_writes_runs_and_reports."""
        name = self._relay_tokens.get(hash_secret(token))
        return name if name is not None and self.live(name) is not None else None

    async def handle_connect(self, request: web.Request) -> web.StreamResponse:
        """``GET /spoke/connect``: the WebSocket upgrade, then :meth:`serve_link`."""
        socket = web.WebSocketResponse(max_msg_size=self.limits.max_frame_bytes * 4, autoping=True)
        await socket.prepare(request)
        await self.serve_link(AiohttpTransport(socket), str(request.remote))
        return socket

    async def serve_link(self, transport: Transport, remote: str) -> None:
        """Handshake, then serve one spoke connection until it ends, over any transport (the
        tests in tests/hub/ use the in-memory pipe). Enrollment or a signed resume first;
        a refused spoke is told why and the close code says whether retrying can help.
        Pinned by tests/hub/test_registry_memory.py, tests/test_enrollment.py and
        tests/test_frames_e2e.py."""
        wait = self.throttle.retry_after(remote)
        if wait > 0:  # before any check: a brute-force client costs no lookup, no audit row
            await transport.close(messages.CLOSE_THROTTLED, "too many rejected attempts from "
                                  f"this address; retry in {math.ceil(wait)} s")
            return
        conn = HubConnection(self.clock, self.limits)
        challenge = secrets.token_bytes(32)
        conn.send_hello(challenge, f"spokehub/{self.version}")
        handshake = HubDriver(conn, transport, name=remote, clock=self.clock)
        await handshake.flush()
        try:
            params = await asyncio.wait_for(self._authenticate(handshake, challenge),
                                            self.limits.handshake_timeout_s)
        except Rejected as err:
            if self.throttle.rejected(remote, str(err)):  # else folded into one row a window
                log.warning("spoke connection from %s rejected: %s", remote, err)
                await self._audit_quietly("spoke.rejected", remote, str(err), result="denied")
            conn.reject_auth(RemoteError(ErrorCode.DENIED, str(err)))
            await handshake.close(err.close_code, str(err))
            return
        except (TimeoutError, ConnectionError) as err:
            await transport.close(messages.CLOSE_PROTOCOL, "handshake failed")
            log.info("handshake with %s failed: %r", remote, err)
            return
        except RemoteError as err:  # the store refused: the hub is stopping (no traceback)
            await transport.close(messages.CLOSE_GOING_AWAY, "hub shutting down")
            log.debug("handshake with %s ended by the stop: %s", remote, err)
            return
        name = params.name
        link = SpokeLink(name, transport, conn, self._dispatch_notification, clock=self.clock,
                         wall_clock=self.wall_clock, tick_s=self.tick_s, ticker=self.ticker)
        link.on_stale = self._on_stale
        link.labels, link.models = list(params.labels), list(params.models)
        link.max_workstreams = params.max_workstreams
        link.batch = "batch" in params.caps  # it reads several frames in one message
        relay_token = new_secret()
        link.relay_token_hash = hash_secret(relay_token)
        self._relay_tokens[link.relay_token_hash] = name
        old = self.links.get(name)
        if old is not None:
            await old.close(messages.CLOSE_REPLACED, "replaced by a newer connection")
        self.links[name] = link
        metrics.SPOKES_CONNECTED.set(len(self.links))
        if params.mode == "resume":  # every connect but the enrolling one
            metrics.RECONNECTS.inc()
        try:
            # Marked connected, and this hub its holder (another hub's older link to it closes
            # when that hub hears ``spoke:NAME``: check_holder), with the audit row.
            self.remote.put(name, None)
            await self.store.audit("spoke.connected", name, f"version {params.version}",
                                   also=self.store.spoke_connected_writes(
                name, self.hub_id, labels=list(params.labels), models=list(params.models),
                version=params.version, max_workstreams=params.max_workstreams,
                relay_token_hash=link.relay_token_hash))
        except RemoteError as err:  # the hub is stopping: the spoke comes back to the next one
            if self.links.get(name) is link:
                del self.links[name]
            self._relay_tokens.pop(link.relay_token_hash, None)
            await transport.close(messages.CLOSE_GOING_AWAY, "hub shutting down")
            log.debug("connect of %s not recorded: %s", name, err)
            return
        conn.accept_auth(
            messages.AuthResult(
                session=secrets.token_hex(8),
                protocol=messages.PROTOCOL_VERSION,
                heartbeat_s=self.limits.heartbeat_s,
                stale_after_s=self.limits.stale_after_s,
                relay_token=relay_token,
            )
        )
        await link.flush()
        del handshake, params, challenge  # not held for the link's life: thousands of them
        reconcile = asyncio.create_task(self._reconcile(link))
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            await link.run()
        finally:
            reconcile.cancel()
            self._relay_tokens.pop(link.relay_token_hash, None)
            if self.links.get(name) is link:
                del self.links[name]
                self._flushed.pop(name, None)
                metrics.SPOKES_CONNECTED.set(len(self.links))
                try:
                    # Not ours: it connected to another hub of the cluster meanwhile; that is
                    # where it lives now, nothing was lost.
                    ours = await self.store.spoke_link_closed(
                        name, self.hub_id, reason=link.close_reason, state=link.gone_state())
                    self.store.wake_audit_readers()
                    if not ours:
                        log.info("spoke %s moved to another hub", name)
                    for hook in self.on_disconnected if ours else ():
                        await hook(link)
                except RemoteError as err:  # the hub is shutting down: startup marks all disconnected
                    log.debug("disconnect of %s not recorded: %s", name, err)
            if handler is not None:
                self._handlers.discard(handler)

    async def _authenticate(self, handshake: HubDriver, challenge: bytes) -> messages.AuthParams:
        while True:
            for event in await handshake.receive_events():
                if isinstance(event, ev.AuthRequested):
                    assert isinstance(event.params, messages.AuthParams)  # the connection made it
                    await self._verify(event.params, challenge)
                    return event.params
                if isinstance(event, ev.ProtocolViolation):
                    raise Rejected(event.message, messages.CLOSE_PROTOCOL)
            await handshake.flush()

    async def _verify(self, p: messages.AuthParams, challenge: bytes) -> None:
        if p.protocol not in messages.SUPPORTED_VERSIONS:
            raise Rejected(
                f"protocol version {p.protocol} is not supported "
                f"(hub speaks {list(messages.SUPPORTED_VERSIONS)})",
                messages.CLOSE_PROTOCOL,
            )
        too_far = spoke_refusal(self.version, p.version)
        if too_far is not None:  # before the token is spent: the spoke can be fixed and retry
            raise Rejected(too_far)
        try:
            key_bytes = base64.b64decode(p.public_key, validate=True)
            Ed25519PublicKey.from_public_bytes(key_bytes).verify(
                base64.b64decode(p.signature, validate=True),
                auth_message(challenge, p.name, self.pin),
            )
        except (InvalidSignature, ValueError, binascii.Error):
            raise Rejected("identity proof failed (bad signature)") from None
        spoke = await self.store.get_spoke(p.name)
        if p.mode == "resume":
            # One message whether the name is unknown or its key differs: an unauthenticated
            # client learns nothing about which spokes exist. Revocation is told only to the
            # holder of the enrolled key (who proved it above).
            if spoke is None or not hmac.compare_digest(spoke["public_key"], p.public_key):
                raise Rejected(UNKNOWN_IDENTITY)
            if spoke["revoked_at"] is not None:
                raise Rejected(f"spoke {p.name!r} has been revoked", messages.CLOSE_REVOKED)
            return
        await self._enroll(p, spoke)

    async def _enroll(self, p: messages.AuthParams, spoke: dict[str, Any] | None) -> None:
        token = await self.store.get_token(p.token_id or "")
        if token is None or not secret_matches(p.token_secret or "", token["secret_hash"]):
            raise Rejected("join token is unknown")
        # A multi-use token (prefix) enrolls up to ``uses`` spokes named PREFIX-…, one use
        # each, taken atomically below. Pinned by tests/test_multi_use_tokens.py.
        from protocol.tokens import name_under_prefix

        used = (f"join token has no uses left (all {token['uses']} taken)" if token["prefix"]
                else "join token has already been used")
        named = (name_under_prefix(token["name"], p.name) if token["prefix"]
                 else hmac.compare_digest(token["name"], p.name))
        if (named and spoke is not None and spoke["revoked_at"] is None
                and hmac.compare_digest(spoke["public_key"], p.public_key)):
            # The enrolment went through but the spoke never heard so (the link died before
            # it read the answer): it retries with its token and the key it proved above,
            # which alone would let it resume. A resume, not a dead end; no use is taken.
            # Pinned by tests/test_enrollment.py::test_an_enrolment_the_spoke_never_heard_of_resumes.
            return
        if token["revoked_at"] is not None:
            raise Rejected("join token has been revoked")
        if token["uses_left"] <= 0:
            raise Rejected(used)
        if token["expires_at"] <= self.wall_clock():
            raise Rejected("join token has expired")
        if not named:
            raise Rejected(f"join token enrolls spokes named {token['name']}-…, not {p.name!r}"
                           if token["prefix"] else
                           f"join token is bound to spoke name {token['name']!r}, not {p.name!r}")
        if spoke is not None and spoke["revoked_at"] is None:
            raise Rejected(f"a spoke named {p.name!r} is already enrolled; revoke it first")
        if not await self.store.take_token(token["id"]):
            raise Rejected(used)
        await self.store.enroll_spoke(p.name, p.public_key, list(p.labels), p.version)
        await self.store.audit("spoke.enrolled", p.name, f"token {token['id']}")

    async def _dispatch_notification(self, link: SpokeLink, method: str, params: BaseModel) -> None:
        if isinstance(params, messages.SpokeHeartbeat):
            await self._on_heartbeat(link)
        handler = self.on_notification.get(method)
        if handler is not None:
            await handler(link, params)

    async def _on_heartbeat(self, link: SpokeLink) -> None:
        """Nothing is written per heartbeat: the link keeps when it was heard from, and
        :meth:`flush_last_seen` writes every live spoke's in one transaction."""

    async def flush_last_seen(self) -> int:
        """One batch of ``last_seen`` for every live link heard from since the last flush;
        how many. Run every ``LAST_SEEN_FLUSH_S`` and when links close."""
        seen: dict[str, float] = {}
        for link in self.links.values():
            when = link.last_heartbeat_at or link.connected_at
            if self._flushed.get(link.name) != when:
                seen[link.name] = when
        if seen:
            try:
                await self.store.touch_spokes(seen)
            except RemoteError as err:  # the store is closing: the hub is stopping
                log.debug("last_seen not written: %s", err)
                return 0
            self._flushed.update(seen)
        return len(seen)

    async def housekeeping_forever(self) -> None:
        """The registry's periodic chores: last_seen in batches, folded rejections."""
        while True:
            await asyncio.sleep(LAST_SEEN_FLUSH_S)
            await self.flush_last_seen()
            await self.flush_rejections()
            release_free_memory()

    async def _on_stale(self, link: SpokeLink, stale: bool) -> None:
        """A live link went quiet (or spoke again): a line in the events timeline."""
        if stale:
            await self.store.audit("spoke.stale", link.name,
                                   f"nothing received for {link.silent_s():.0f} s")
        else:
            await self.store.audit("spoke.recovered", link.name, "heard from again")

    async def _reconcile(self, link: SpokeLink) -> None:
        """Inventories are reconciled, not trusted: labelled boxes the hub does not know are
        reaped on the spoke, and boxes the hub thought alive but the spoke lacks are marked lost."""
        try:
            known = {
                b["id"]
                for b in await self.store.list_boxes(spoke=link.name)
                if b["state"] in ("running", "paused")
            }
            listing = await link.call(v.BOX_LIST, v.Empty())
            reported = {b.box_id for b in listing.boxes}
            result = await link.call(v.BOX_REAP, v.Reap(keep=sorted(known)))
            removed = list(result.removed)
            if removed:
                await self.store.audit("box.reaped", link.name, ", ".join(removed))
            for box_id in known - reported:
                await self.store.set_box_state(box_id, "lost")
        except RemoteError as err:
            log.warning("reconcile with %s failed: %s", link.name, err)
        for hook in self.on_connected:
            try:
                await hook(link)
            except RemoteError as err:
                log.warning("after-connect hook for %s failed: %s", link.name, err)

    async def revoke(self, name: str) -> bool:
        """Delete the spoke's key and close its live link at once with the revoked code, so
        the spoke stops instead of retrying. Pinned by
        tests/hub/test_registry_memory.py::test_revoke_closes_the_link_and_the_spoke_stops_for_good
        and tests/test_enrollment.py::test_revoke_disconnects_at_once_and_forever."""
        changed = await self.store.revoke_spoke(name)
        link = self.links.pop(name, None)
        if link is not None:
            await link.close(messages.CLOSE_REVOKED, "spoke revoked")
        if changed:
            await self.store.runs_ended_on_spoke(name, "revoked", "the spoke was revoked")
            await self.store.audit("spoke.revoked", name)
        return changed

    async def _audit_quietly(self, kind: str, subject: str, detail: str, *, result: str) -> None:
        try:
            await self.store.audit(kind, subject, detail, result=result)
        except RemoteError as err:  # the store is closing: the hub is stopping
            log.debug("audit row %s %s not written: %s", kind, subject, err)

    async def flush_rejections(self, *, everything: bool = False) -> int:
        """Write one ``spoke.rejected`` row per address whose throttle window ended with
        folded attempts (their count in ``detail``); how many rows. Called every window by
        :meth:`fold_rejections_forever`."""
        rows = self.throttle.summaries(everything=everything)
        for folded in rows:
            log.warning("%d more spoke connections from %s rejected or turned away in %.0fs "
                        "(last: %s)", folded.count, folded.remote, folded.window_s, folded.last_reason)
            await self._audit_quietly(
                "spoke.rejected", folded.remote,
                f"{folded.count} more attempts rejected or turned away in {folded.window_s:.0f} s "
                f"(last: {folded.last_reason})", result=f"denied x{folded.count}")
        return len(rows)

    @staticmethod
    async def _goodbye(link: SpokeLink, goodbye: messages.HubGoodbye) -> None:
        with contextlib.suppress(ConnectionError):
            link.conn.notify("hub.goodbye", goodbye)
        await link.close(messages.CLOSE_GOING_AWAY, "hub shutting down")

    async def close_all(self, timeout_s: float = 10.0) -> None:
        """Hub shutdown: tell every spoke the hub is going away (close code 1001, which a
        spoke answers by reconnecting with backoff), then wait, at most ``timeout_s``, for the
        link handlers to record the disconnects, so the store closes only after them."""
        handlers = set(self._handlers)
        links = list(self.links.values())
        # Come back spread over a few seconds: about 400 handshakes a second for the new hub.
        goodbye = messages.HubGoodbye(reconnect_within_s=min(30.0, max(2.0, len(links) / 400)))
        closing = [asyncio.ensure_future(self._goodbye(link, goodbye)) for link in links]
        if closing:
            done, slow = await asyncio.wait(closing, timeout=timeout_s)
            for task in slow:
                task.cancel()
            for task in done:
                if task.exception() is not None:  # a socket already gone: nothing to tell
                    log.debug("closing a spoke link failed: %r", task.exception())
        if handlers:
            _done, pending = await asyncio.wait(handlers, timeout=timeout_s)
            if pending:
                log.warning("%d spoke link(s) did not finish closing in %.0fs", len(pending),
                            timeout_s)
        await self.ticker.stop()
