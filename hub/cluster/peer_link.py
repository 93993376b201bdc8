"""Calling a spoke whose link another hub of the cluster holds, through that hub.

A :class:`PeerLink` offers what a :class:`hub.spoke_link.SpokeLink` offers the box service,
channels, leasing and the janitor (:class:`hub.spoke_calls.SpokeCalls`): ``call``,
``call_stream`` and ``call_upload`` with the same semantics, each one HTTP request to the
holding hub's internal routes (hub/cluster/peer_api.py), answered in the frames of
hub/cluster/peer_frames.py. Errors come back typed: the spoke's own error with its code and
message; the peer unreachable, dropping the call, or no longer holding the spoke is
``unavailable`` ("spoke X is not connected (its hub …)") and marks the link :attr:`closed`,
as a broken local link is, so the box service's re-attach (hub/boxes.py ``_relink``) waits
for the spoke to come back wherever it reconnects. Cancelling a call (the caller cancelled,
``StreamCall.cancel``) closes its HTTP connection, and the holding hub then cancels the call
on the spoke.

:class:`PeerClient` is the one HTTP client of a hub process for its peers (one aiohttp
session, keep-alive pooled, no cap on connections: an open PTY holds one for hours). Every hub
of a cluster serves the same certificate (that is how spokes' pins hold whichever hub they
reach), so a peer is verified by checking that its certificate's pin is ours; a mismatch is
an error naming both pins, never a fallback. Hubs behind a TLS proxy (``insecure_http``) talk
plain http to each other, and only they may. Pinned by tests/hub/test_peer_forwarding.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Generic

import aiohttp

from hub.cluster import peer_frames as pf
from hub.spoke_calls import SpokeFacts
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.verbs import P, R, Verb

log = logging.getLogger("spokehub.hub.peer")

PREFIX = "/internal/peer/v1"
HUB_HEADER = "X-Spokehub-Hub"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
PIN_RE = re.compile(r"^sha256:[0-9a-fA-F]{64}$")
CONNECT_TIMEOUT_S = 10.0
# The holding hub writes a keepalive frame after KEEPALIVE_S of silence (peer_api.py), so a
# read that waits this long means the peer hung or the network did.
READ_TIMEOUT_S = 60.0
WINDOW_FRAMES = 16  # chunks read ahead of a slow consumer, then the peer's writes wait
_END: Any = object()


class PeerClient:
    """This hub's client for its peers. ``secret`` is read per request (it may be rotated);
    ``hub_id`` names this hub in the peers' logs. Bad configuration is a ValueError at once."""

    def __init__(self, pin: str, secret: Callable[[], str], hub_id: str,
                 insecure_http: bool = False, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        if not HUB_ID_RE.fullmatch(hub_id):
            raise ValueError(f"hub id {hub_id[:40]!r} must be 1-100 letters, digits, . _ : -")
        if not (insecure_http and not pin) and not PIN_RE.fullmatch(pin):
            raise ValueError(f"certificate pin {pin[:30]!r} is not sha256: + 64 hex digits")
        self.pin, self.secret, self.hub_id = pin.lower(), secret, hub_id
        self.insecure_http = insecure_http
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                             sock_read=read_timeout_s)
        self._fingerprint = aiohttp.Fingerprint(bytes.fromhex(self.pin[7:])) if self.pin else None
        self._session: aiohttp.ClientSession | None = None

    def link(self, spoke: str, peer_url: str, info: SpokeFacts) -> PeerLink:
        """A link to ``spoke`` through the hub at ``peer_url``. Only https, verified by the
        pin, unless this hub was told it sits behind a TLS proxy (``insecure_http``)."""
        url = peer_url.rstrip("/")
        if not url.startswith("https://") and not (self.insecure_http and
                                                   url.startswith("http://")):
            raise ValueError(f"peer URL {peer_url[:100]!r} must be https:// (http:// only for "
                             "hubs run with insecure http behind a TLS proxy)")
        if url.startswith("https://") and self._fingerprint is None:
            raise ValueError(f"peer URL {peer_url[:100]!r} is https but this hub has no pin")
        return PeerLink(self, spoke, url, info)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, method: str, url: str, headers: Mapping[str, str],
                      body: AsyncIterator[bytes] | None) -> aiohttp.ClientResponse:
        """A client's HTTP request passed on, as it is, to the hub at ``url`` (its peer
        address): the same pinned TLS as every hub-to-hub call, the caller's own credentials
        (every hub checks them against the shared store), no read timeout (an event stream
        may be quiet for long). The caller marks it forwarded so it goes no further. Used
        for MCP sessions, which live in one hub's memory (hub/mcp/sessions.py)."""
        ssl: aiohttp.Fingerprint | bool = True
        if url.startswith("https://"):
            if self._fingerprint is None:
                raise RemoteError(ErrorCode.UNAVAILABLE, "this hub has no pin to check its peers by")
            ssl = self._fingerprint
        elif not (self.insecure_http and url.startswith("http://")):
            raise RemoteError(ErrorCode.UNAVAILABLE, f"peer URL {url[:100]!r} must be https://")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout.sock_connect)
        try:
            return await self._http().request(method, url, headers=dict(headers), data=body,
                                              ssl=ssl, timeout=timeout, allow_redirects=False)
        except aiohttp.ServerFingerprintMismatch as err:
            raise RemoteError(ErrorCode.UNAVAILABLE, f"hub {url} presents a TLS certificate "
                              f"with pin sha256:{err.got.hex()}, not this cluster's") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise RemoteError(ErrorCode.UNAVAILABLE, f"hub {url} cannot be reached: "
                              f"{err or type(err).__name__}") from None

    async def post(self, link: PeerLink, route: str, data: Any,
                   upload: _Upload | None = None) -> aiohttp.ClientResponse:
        """POST ``data`` to the peer's ``route``; a 200 answer (its frames follow), else the
        typed error. The secret travels only in the header, and only to a verified peer."""
        headers = {"Authorization": f"Bearer {self.secret()}", HUB_HEADER: self.hub_id,
                   "Content-Type": pf.CONTENT_TYPE}
        ssl: aiohttp.Fingerprint | bool = True  # plain http: no TLS at all
        if link.peer_url.startswith("https://"):
            assert self._fingerprint is not None  # link() refuses https without a pin
            ssl = self._fingerprint
        try:
            resp = await self._http().post(f"{link.peer_url}{PREFIX}/{route}", data=data,
                                           headers=headers, ssl=ssl)
        except aiohttp.ServerFingerprintMismatch as err:
            message = (f"hub {link.peer_url} presents a TLS certificate with pin "
                       f"sha256:{err.got.hex()}, not this cluster's {self.pin}: refusing to talk "
                       "to it (every hub of a cluster serves the same certificate)")
            log.error("%s", message)
            raise RemoteError(ErrorCode.UNAVAILABLE, message) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            if upload is not None and upload.error is not None:
                raise upload.error from None  # our source broke the request, not the peer
            raise link.gone(f"cannot be reached: {err or type(err).__name__}") from None
        if resp.status == 200:
            return resp
        try:
            raw = await resp.content.read(64 * 1024)
        except (aiohttp.ClientError, OSError, TimeoutError):
            raw = b""
        finally:
            resp.close()
        if resp.status == 401:
            raise RemoteError(ErrorCode.UNAVAILABLE, f"hub {link.peer_url} refused this hub's "
                              "cluster secret (401): the hubs of a cluster must share it")
        try:
            error = pf.json_of(raw, "the error").get("error")
            if not isinstance(error, dict):
                raise ValueError("no error object")
            code, message = ErrorCode(str(error.get("code"))), str(error.get("message", ""))
        except (pf.FrameError, ValueError):
            raise link.gone(f"answered HTTP {resp.status}") from None
        if code is ErrorCode.UNAVAILABLE:
            raise link.gone(f"answered: {message}")
        raise RemoteError(code, message)


class PeerLink:
    """A spoke another hub holds, called through that hub (see the module docstring).
    Once a call learned that the peer no longer holds it, :attr:`closed` is True and every
    later call fails at once with ``unavailable``: the registry makes a new link."""

    def __init__(self, client: PeerClient, name: str, peer_url: str, info: SpokeFacts) -> None:
        self.client, self.name, self.peer_url = client, name, peer_url
        self.labels: list[str] = list(info.labels)
        self.models: list[str] = list(info.models)
        self.max_workstreams = info.max_workstreams
        self.leaving = info.leaving
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def gone(self, reason: str) -> RemoteError:
        """Mark the link closed; the ``unavailable`` error that says why."""
        self._closed = True
        return RemoteError(ErrorCode.UNAVAILABLE,
                           f"spoke {self.name!r} is not connected (its hub {self.peer_url} {reason})")

    def _envelope(self, verb: Verb[P, R], params: P, timeout_s: float | None) -> dict[str, Any]:
        return {"spoke": self.name, "verb": verb.name, "params": params.model_dump(mode="json"),
                "timeout_s": timeout_s}

    async def _open(self, route: str, data: Any,
                    upload: _Upload | None = None) -> aiohttp.ClientResponse:
        if self._closed:
            raise RemoteError(ErrorCode.UNAVAILABLE, f"spoke {self.name!r} is not connected "
                              f"(its hub {self.peer_url} no longer holds it)")
        return await self.client.post(self, route, data, upload)

    async def next_frame(self, resp: aiohttp.ClientResponse,
                         upload: _Upload | None = None) -> pf.Frame:
        """The next frame of an answer; a broken or cut answer makes the link gone, unless
        it broke because the upload's own source failed (then that error is raised)."""
        try:
            frame = await pf.read_frame(resp.content)
        except pf.FrameError as err:
            raise RemoteError(ErrorCode.INTERNAL,
                              f"hub {self.peer_url} answered a malformed frame: {err}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            if upload is not None and upload.error is not None:
                raise upload.error from None
            raise self.gone(f"dropped the call: {err or type(err).__name__}") from None
        if frame is None:
            raise self.gone("ended the call without its result")
        return frame

    async def finish(self, verb: Verb[Any, R], resp: aiohttp.ClientResponse, data: bytes) -> R:
        """The outcome carried by an end frame (the connection goes back to the pool)."""
        try:
            obj = pf.json_of(data, "the end frame")
        except pf.FrameError as err:
            raise RemoteError(ErrorCode.INTERNAL, f"hub {self.peer_url}: {err}") from None
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await resp.content.read(1)  # the body's end: the connection is reused
        resp.release()
        if "result" in obj:
            return v.parse_result(verb, obj["result"])
        error = obj.get("error")
        if not isinstance(error, dict):
            raise RemoteError(ErrorCode.INTERNAL, f"hub {self.peer_url}: an end frame with "
                              "neither result nor error")
        failure = RemoteError.from_wire({"message": error.get("message", ""),
                                         "data": {"kind": error.get("code")}})
        if obj.get("link_closed") is True:
            self._closed = True  # the holder's link broke: the spoke reconnects somewhere
        raise failure

    async def _unary(self, verb: Verb[P, R], resp: aiohttp.ClientResponse,
                     upload: _Upload | None = None) -> R:
        try:
            while True:
                kind, _name, data = await self.next_frame(resp, upload)
                if kind == pf.KIND_END:
                    return await self.finish(verb, resp, data)
                if kind != pf.KIND_KEEPALIVE:
                    raise RemoteError(ErrorCode.INTERNAL, f"hub {self.peer_url} sent a frame "
                                      f"of kind {kind} in the answer of {verb.name}")
        except BaseException:
            resp.close()  # a cancelled caller: the dropped connection cancels it on the spoke
            raise

    async def call(self, verb: Verb[P, R], params: P, timeout_s: float | None = None) -> R:
        """As :meth:`protocol.hub_driver.HubDriver.call`, through the holding hub."""
        body = pf.json_frame(pf.KIND_PARAMS, self._envelope(verb, params, timeout_s))
        return await self._unary(verb, await self._open("call", body))

    async def call_stream(self, verb: Verb[P, R], params: P,
                          timeout_s: float | None = None) -> PeerStreamCall[R]:
        """As :meth:`protocol.hub_driver.HubDriver.call_stream`: chunks, then the result."""
        body = pf.json_frame(pf.KIND_PARAMS, self._envelope(verb, params, timeout_s))
        return PeerStreamCall(self, verb, await self._open("stream", body))

    async def call_upload(self, verb: Verb[P, R], params: P, source: AsyncIterator[bytes],
                          timeout_s: float | None = None) -> R:
        """As :meth:`protocol.hub_driver.HubDriver.call_upload`: ``source`` streamed to the
        holding hub (its pace is the spoke's window, through TCP). If the caller is cancelled
        or ``source`` raises, the call is cancelled on the spoke and that error raised."""
        upload = _Upload(self._envelope(verb, params, timeout_s), source)
        try:
            upload.resp = await self._open("upload", upload.frames(), upload)
            if upload.error is not None:  # it broke while the answer's headers came
                upload.resp.close()
            return await self._unary(verb, upload.resp, upload)
        except BaseException:
            if upload.error is not None:
                raise upload.error from None
            raise


class _Upload:
    """An upload's body: the params frame, ``source`` as chunk frames, the end frame. What
    ``source`` raised is kept: the call then fails with it, not with the broken request."""

    def __init__(self, envelope: dict[str, Any], source: AsyncIterator[bytes]) -> None:
        self.envelope, self.source = envelope, source
        self.error: BaseException | None = None
        self.resp: aiohttp.ClientResponse | None = None  # the answer, once it started

    async def frames(self) -> AsyncIterator[bytes]:
        yield pf.json_frame(pf.KIND_PARAMS, self.envelope)
        try:
            async for piece in self.source:
                for start in range(0, len(piece), pf.MAX_CHUNK_BYTES):
                    part = piece if len(piece) <= pf.MAX_CHUNK_BYTES else \
                        piece[start:start + pf.MAX_CHUNK_BYTES]
                    yield pf.chunk_header("stdin", len(part))
                    yield part
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except BaseException as err:
            # aiohttp keeps the connection open when a body breaks off: drop it, so the peer
            # cancels the call on the spoke and the reader of the answer stops waiting.
            self.error = err
            if self.resp is not None:
                self.resp.close()
            raise
        yield pf.json_frame(pf.KIND_END, {})


class PeerStreamCall(Generic[R]):
    """A down-streamed call through a peer, as :class:`protocol.hub_driver.StreamCall`: a
    reader task keeps at most :data:`WINDOW_FRAMES` chunks ahead of :meth:`chunks` (then the
    peer's writes wait, and with them the spoke's window); :meth:`result` does not need the
    chunks read first; :meth:`cancel` drops the connection, which cancels it on the spoke."""

    def __init__(self, link: PeerLink, verb: Verb[Any, R], resp: aiohttp.ClientResponse) -> None:
        self._link, self._verb, self._resp = link, verb, resp
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._room = asyncio.Event()
        self._outcome: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                while self._queue.qsize() >= WINDOW_FRAMES:
                    self._room.clear()
                    await self._room.wait()
                kind, name, data = await self._link.next_frame(self._resp)
                if kind == pf.KIND_CHUNK:
                    self._queue.put_nowait((name, data))
                elif kind == pf.KIND_END:
                    self._finish(await self._link.finish(self._verb, self._resp, data))
                    return
                elif kind != pf.KIND_KEEPALIVE:
                    raise RemoteError(ErrorCode.INTERNAL, f"hub {self._link.peer_url} sent a "
                                      f"frame of kind {kind} in a stream")
        except RemoteError as err:
            self._finish(err)
        except Exception as err:  # noqa: BLE001 - the caller gets it as a typed error
            self._finish(RemoteError(ErrorCode.INTERNAL, f"reading from hub "
                                     f"{self._link.peer_url} failed: {err!r:.200}"))
        finally:
            if not self._outcome.done() or self._outcome.exception() is not None:
                self._resp.close()

    def _finish(self, outcome: R | RemoteError) -> None:
        if not self._outcome.done():
            if isinstance(outcome, RemoteError):
                self._outcome.set_exception(outcome)
                self._outcome.exception()  # retrieved: nobody may be waiting any more
            else:
                self._outcome.set_result(outcome)
        self._queue.put_nowait(_END)

    async def chunks(self) -> AsyncIterator[tuple[str, bytes]]:
        while (item := await self._queue.get()) is not _END:
            self._room.set()
            yield item
        self._queue.put_nowait(_END)  # a later iteration ends at once too

    async def result(self) -> R:
        return await asyncio.shield(self._outcome)

    async def cancel(self) -> None:
        self._finish(RemoteError(ErrorCode.CANCELLED, "call cancelled"))
        self._task.cancel()
        self._resp.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
