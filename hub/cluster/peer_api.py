"""The internal routes a hub serves its peers: a call for a spoke whose link is here.

``POST /internal/peer/v1/call`` (a unary verb), ``/stream`` (a down-streamed one: exec
output, a download, a channel) and ``/upload`` (an up-streamed one: a file), each called by
:class:`hub.cluster.peer_link.PeerLink` on another hub of the cluster. The body starts with a
params frame (``{"spoke", "verb", "params", "timeout_s"}``); an upload's chunks follow it.
The answer is 200 and frames (hub/cluster/peer_frames.py): chunks, keepalives while the spoke
is silent, then one end frame with the result or the typed error. What is refused before the
call starts is an HTTP error in the hub's JSON shape: 401 (no or wrong cluster secret: nothing
is read or run), 400 (a malformed body, an unknown verb, a verb on the wrong route, bad
params), 503 ``unavailable`` (the spoke's link is not on this hub).

The call runs on this hub's own link only (``registry.local``; a link that is not a local
:class:`~protocol.hub_driver.HubDriver` counts as absent): a forwarded call is never forwarded
again, so two hubs with stale views cannot bounce a call between them. Each chunk is written
and drained before the next is read, so a slow calling hub slows the spoke (the link's window
is only opened as chunks are taken). When the calling hub goes away (its caller cancelled, or
it died) the call is cancelled on the spoke (hub/disconnect.py), as for a REST exec.

These routes are no part of the public API: the auth middleware lets them through to the
secret check here (hub/roles.py ``PEER``; a handler without :func:`peer_guarded` is refused
there), and the OpenAPI document leaves them out. Pinned by tests/hub/test_peer_forwarding.py.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web

from hub import roles
from hub.cluster import peer_frames as pf
from hub.cluster.peer_link import HUB_HEADER, HUB_ID_RE, PREFIX
from hub.disconnect import ClientGone, cancelled_on_disconnect
from hub.http_util import FailureLog, error_response, unauthorized
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.hub_driver import HubDriver

log = logging.getLogger("spokehub.hub.peer")

KEEPALIVE_S = 15.0  # a quarter of peer_link.READ_TIMEOUT_S
T = TypeVar("T")
_ROUTE_STREAM = {"call": "none", "stream": "down", "upload": "up"}
_DONE: Any = object()


class LocalLinks(Protocol):
    """The registry's answer for the links on this hub (hub/registry.py)."""

    def local(self, name: str) -> Any: ...


def peer_guarded(handler: T) -> T:
    """Mark a handler as checking the cluster secret itself: the auth middleware serves the
    internal routes only to such handlers (hub/http_util.py)."""
    setattr(handler, roles.PEER_GUARD, True)
    return handler


class PeerApi:
    """Serves peers' calls on ``registry``'s local links; ``secret`` is the cluster's
    hub-to-hub secret, read per request (empty: every peer request is refused)."""

    def __init__(self, registry: LocalLinks, secret: Callable[[], str], *,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self.registry, self.secret, self.keepalive_s = registry, secret, keepalive_s
        self._refused = FailureLog("peer requests with a wrong or missing cluster secret")

    def routes(self) -> list[web.RouteDef]:
        return [web.post(f"{PREFIX}/{name}", self._handler(name)) for name in _ROUTE_STREAM]

    def _handler(self, route: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.serve(request, route)
        handle.__name__ = f"peer_{route}"
        return peer_guarded(handle)

    def _refusal(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries the cluster secret (constant-time compare; the
        secret is never logged); 400 unless it names the calling hub."""
        expected = self.secret()
        header = request.headers.get("Authorization", "")
        sent = header[7:].strip() if header.startswith("Bearer ") else ""
        if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
            self._refused.note(request.remote or "unknown")
            return unauthorized("this route is for the hubs of the cluster: it needs the "
                                "cluster secret")
        if not HUB_ID_RE.fullmatch(request.headers.get(HUB_HEADER, "")):
            return error_response(ErrorCode.INVALID, f"missing or malformed {HUB_HEADER} header "
                                  "(the calling hub's id)")
        return None

    async def serve(self, request: web.Request, route: str) -> web.StreamResponse:
        """One peer call: checks, then the call with its answer streamed as frames."""
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        caller = request.headers[HUB_HEADER]
        try:
            spoke, verb, params, timeout_s = await self._envelope(request, route)
        except RemoteError as err:
            return error_response(err.code, err.message)
        link = self.registry.local(spoke)
        if not isinstance(link, HubDriver) or link.closed:
            return error_response(ErrorCode.UNAVAILABLE, f"spoke {spoke!r} is not connected to "
                                  "this hub")
        log.debug("%s for %s on spoke %s", verb.name, caller, spoke)
        response = web.StreamResponse(headers={"Content-Type": pf.CONTENT_TYPE})
        try:
            await response.prepare(request)
            end = await cancelled_on_disconnect(
                request, self._run(route, request, response, link, verb, params, timeout_s))
            await response.write(pf.json_frame(pf.KIND_END, end))
            await response.write_eof()
        except (ClientGone, ConnectionError):
            log.info("%s on spoke %s: hub %s went away; the call was cancelled", verb.name,
                     spoke, caller)
        return response

    async def _envelope(self, request: web.Request,
                        route: str) -> tuple[str, v.Verb[Any, Any], Any, float | None]:
        """The params frame, checked: every problem is a typed ``invalid`` (400)."""
        try:
            frame = await pf.read_frame(request.content)
        except pf.FrameError as err:
            raise RemoteError(ErrorCode.INVALID, f"malformed body: {err}") from None
        if frame is None or frame[0] != pf.KIND_PARAMS:
            raise RemoteError(ErrorCode.INVALID, "the body must start with a params frame")
        try:
            body = pf.json_of(frame[2], "the params frame")
        except pf.FrameError as err:
            raise RemoteError(ErrorCode.INVALID, str(err)) from None
        spoke, name, timeout_s = body.get("spoke"), body.get("verb"), body.get("timeout_s")
        if not isinstance(spoke, str) or not v.SPOKE_NAME_RE.fullmatch(spoke):
            raise RemoteError(ErrorCode.INVALID, "field 'spoke' must be a spoke name")
        if not isinstance(name, str):
            raise RemoteError(ErrorCode.INVALID, "field 'verb' must be a verb's name")
        verb = v.VERBS.get(name)
        if verb is None:
            raise RemoteError(ErrorCode.INVALID, f"verb {name[:80]!r} is not on the allowlist")
        if verb.stream != _ROUTE_STREAM[route]:
            raise RemoteError(ErrorCode.INVALID, f"verb {name} does not go to the {route} route")
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(
                timeout_s, int | float) or not math.isfinite(timeout_s) or timeout_s <= 0):
            raise RemoteError(ErrorCode.INVALID, "field 'timeout_s' must be a positive number")
        params = v.parse_params(verb, body.get("params"))  # invalid: names the field
        return spoke, verb, params, None if timeout_s is None else float(timeout_s)

    async def _run(self, route: str, request: web.Request, response: web.StreamResponse,
                   link: HubDriver, verb: v.Verb[Any, Any], params: Any,
                   timeout_s: float | None) -> dict[str, Any]:
        """The call on the spoke; its end frame's object (the result, or the typed error)."""
        try:
            if route == "call":
                result = await self._alive(response, link.call(verb, params, timeout_s))
            elif route == "upload":
                source = _upload_source(request)
                result = await self._alive(response,
                                           link.call_upload(verb, params, source, timeout_s))
            else:
                result = await self._stream(response, link, verb, params, timeout_s)
        except RemoteError as err:
            return {"error": {"code": err.code.value, "message": err.message},
                    "link_closed": link.closed}
        except _BodyError as err:
            return {"error": {"code": ErrorCode.INVALID.value, "message": str(err)},
                    "link_closed": False}
        except ConnectionError:
            raise  # the calling hub went away: nobody to answer
        except Exception as err:  # a bug here must answer the call, not look like a lost link
            log.exception("forwarded %s on spoke %s failed", verb.name, link.name)
            return {"error": {"code": ErrorCode.INTERNAL.value,
                              "message": f"{verb.name}: {type(err).__name__}: {err}"[:500]},
                    "link_closed": False}
        return {"result": result.model_dump(mode="json")}

    async def _stream(self, response: web.StreamResponse, link: HubDriver,
                      verb: v.Verb[Any, Any], params: Any, timeout_s: float | None) -> Any:
        call = await link.call_stream(verb, params, timeout_s)
        finished = False
        try:
            chunks = call.chunks()
            while (item := await self._alive(response, anext(chunks, _DONE))) is not _DONE:
                stream, data = item
                await response.write(pf.chunk_header(stream, len(data)))
                await response.write(data)  # drained: a slow peer slows the spoke
            result = await self._alive(response, call.result())
            finished = True
            return result
        finally:
            if not finished:
                await call.cancel()

    async def _alive(self, response: web.StreamResponse, work: Awaitable[T]) -> T:
        """``await work``, writing a keepalive frame after each ``keepalive_s`` of silence;
        cancelled, it cancels ``work`` (a verb call: then on the spoke too)."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.keepalive_s)
                if done:
                    return task.result()
                await response.write(pf.KEEPALIVE)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})


class _BodyError(Exception):
    """An upload body that broke off or is malformed (the calling hub went away, or a bug)."""


async def _upload_source(request: web.Request) -> AsyncIterator[bytes]:
    """The chunks of an upload body, up to its end frame; a body cut before it, or holding
    anything else, raises (and the spoke's handler is cancelled)."""
    while True:
        try:
            frame = await pf.read_frame(request.content)
        except pf.FrameError as err:
            raise _BodyError(f"malformed upload body: {err}") from None
        except Exception as err:  # noqa: BLE001 - the connection broke: the caller went away
            raise _BodyError(f"the upload broke off: {err!r:.200}") from None
        if frame is None:
            raise _BodyError("the upload ended before its end frame")
        kind, _name, data = frame
        if kind == pf.KIND_END:
            return
        if kind != pf.KIND_CHUNK:
            raise _BodyError(f"a frame of kind {kind} inside an upload")
        yield data
