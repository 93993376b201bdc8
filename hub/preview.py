"""Port previews: ``https://HUB/preview/BOX/PORT/…`` proxies to a port inside a box (issue 14).

``POST /api/boxes/{id}/ports`` (operator) returns a signed, expiring link:
``/preview/BOX/PORT/?preview_token=T`` where ``T`` is ``ISSUED.EXPIRES.SIG`` and ``SIG`` the
HMAC-SHA256, with the cluster's preview secret (in the store: every hub of a cluster checks
the links of the others; hub/store/cluster.py), of box,
port, issue and expiry times. The first visit checks it, sets it as an HttpOnly cookie whose
``Path`` is that one preview (``/preview/BOX/PORT/``: no other preview or hub route ever sees
it) and redirects to the clean URL; each later request is checked again, so the link dies at
its expiry. ``DELETE /api/boxes/{id}/ports`` revokes every link issued so far for the box
(kept in the store), and a destroyed box answers nothing. A forged, expired or
revoked link is refused (403) saying which. Without a link, a bearer API key or a signed-in
user with the operator role may open a preview too (the user then gets the cookie as well,
so the page's own requests work).

What a link grants: HTTP and WebSocket requests to that one port of that one box, nothing
else. The box sees no credentials of the hub (``Authorization`` and the hub's cookies are
removed), and its pages run sandboxed (``Content-Security-Policy: sandbox`` without
``allow-same-origin``), so a page in a box cannot use a visitor's hub session. See
docs/security.md. Pinned by tests/test_port_preview.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from pydantic import Field

from hub import roles
from hub.channels import ChannelService
from hub.http_util import SESSION_COOKIE, actor, parsed_body, unauthorized
from hub.openapi import Param, Reply, operation
from hub.openapi.models.common import Answer, Body
from hub.preview_proxy import HOP_BY_HOP, proxy_http, proxy_websocket
from hub.store import Store
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import hash_secret
from protocol.units import UnitError, parse_ttl

PREVIEW_COOKIE = "spokehub_preview"
TOKEN_PARAM = "preview_token"
MAX_TTL_S = 7 * 86400.0
DEFAULT_TTL_S = 3600.0
REVOKED = "preview-revoked:"  # + box id: links issued up to then (ms) are refused
BOX_PATH = (Param("id", {"type": "string", "pattern": v.BOX_ID_RE.pattern}, "the box",
                  where="path"),)


class PortBody(Body):
    port: int = Field(ge=1, le=65535, description="the TCP port inside the box")
    ttl: str | None = Field(default=None, description="how long the link works, e.g. 30m, "
                            "1h, 7d (default 1h, at most 7d)")


class PortLink(Answer):
    url: str
    box: str
    port: int
    expires_at: float


class PreviewsRevoked(Answer):
    box: str
    revoked_before: float


class Previews:
    """The link API and the ``/preview/`` proxy routes."""

    def __init__(self, channels: ChannelService, store: Store, public_url: str,
                 *, https: bool | None = None, clock: Callable[[], float] = time.time) -> None:
        self.channels, self.store, self.clock = channels, store, clock
        self.public_url = public_url.rstrip("/")
        self.https = public_url.startswith("https://") if https is None else https
        # The signing key and the revocations are the cluster's (hub/store/cluster.py): a
        # link made through one hub opens through any hub behind the same URL.
        self._key = b""

    async def _signing_key(self) -> bytes:
        """The cluster's preview secret, read once (made by the first hub that asks)."""
        if not self._key:
            self._key = (await self.store.cluster_secret("preview")).encode()
        return self._key

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/boxes/{id}/ports", self.create_link),
            web.delete("/api/boxes/{id}/ports", self.revoke_links),
            web.route("*", "/preview/{box}/{port}/{tail:.*}", self.proxy),
            web.route("*", "/preview/{box}/{port}", self.slash),
        ]

    # ---------------------------------------------------------------- signing
    def _sig(self, box: str, port: int, issued_ms: int, expires: int) -> str:
        if not self._key:
            raise RuntimeError("the preview key is read first (_signing_key)")
        message = f"{box}\n{port}\n{issued_ms}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    async def sign(self, box: str, port: int, ttl_s: float) -> tuple[str, float]:
        """A link token ``ISSUED_MS.EXPIRES.SIG`` for ``box``'s ``port``, and its expiry."""
        await self._signing_key()
        issued_ms = int(self.clock() * 1000)
        expires = int(issued_ms / 1000 + ttl_s)
        return f"{issued_ms}.{expires}.{self._sig(box, port, issued_ms, expires)}", float(expires)

    async def check(self, token: str, box: str, port: int) -> float:
        """The link's expiry, or ``denied`` saying why it is refused."""
        await self._signing_key()
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise RemoteError(ErrorCode.DENIED, "malformed preview link")
        issued_ms, expires = int(parts[0][:20]), int(parts[1][:20])
        if not hmac.compare_digest(parts[2].encode(), self._sig(box, port, issued_ms,
                                                                expires).encode()):
            raise RemoteError(ErrorCode.DENIED, "forged preview link: its signature does not "
                              "match this box and port")
        if expires <= self.clock():
            raise RemoteError(ErrorCode.DENIED, "this preview link has expired: ask for a new "
                              f"one (hub box port {box} {port})")
        revoked = await self.store.setting(REVOKED + box)
        if revoked is not None and issued_ms <= int(revoked):
            raise RemoteError(ErrorCode.DENIED, "this preview link was revoked")
        return float(expires)

    # ------------------------------------------------------------------- API
    @operation("A signed preview link to a port in a box", tag="boxes", body=PortBody,
               path_params=BOX_PATH, description="A URL on the hub that proxies HTTP and "
               "WebSocket traffic to the port inside the box (docs/api.md, docs/security.md).",
               replies=(Reply(201, "the link", PortLink),), errors=(400, 409))
    async def create_link(self, request: web.Request) -> web.Response:
        box_id = request.match_info["id"]
        body = await parsed_body(request, PortBody)
        if isinstance(body.port, bool) or not 1 <= body.port <= 65535:
            raise RemoteError(ErrorCode.INVALID, f"port must be 1-65535, got {body.port!r:.20}")
        try:
            ttl = parse_ttl(body.ttl) if body.ttl is not None else DEFAULT_TTL_S
        except UnitError as err:
            raise RemoteError(ErrorCode.INVALID, str(err)) from None
        if ttl > MAX_TTL_S:
            raise RemoteError(ErrorCode.INVALID, "ttl may be at most 7d: preview links expire")
        with v.validating(v.BOX_OPEN):
            v.BoxRef(box_id=box_id)
        await self.channels.boxes._live_box(box_id)
        token, expires = await self.sign(box_id, body.port, ttl)
        await self.store.audit("box.preview", box_id, f"port {body.port} for {ttl:.0f} s",
                               actor=actor(request), result="ok")
        url = f"{self.public_url}/preview/{box_id}/{body.port}/?{urlencode({TOKEN_PARAM: token})}"
        return web.json_response({"url": url, "box": box_id, "port": body.port,
                                  "expires_at": expires}, status=201)

    @operation("Revoke a box's preview links", tag="boxes", path_params=BOX_PATH,
               description="Every link issued so far for the box stops working at once.",
               replies=(Reply(200, "revoked", PreviewsRevoked),), errors=(400,))
    async def revoke_links(self, request: web.Request) -> web.Response:
        box_id = request.match_info["id"]
        with v.validating(v.BOX_OPEN):
            v.BoxRef(box_id=box_id)
        now = int(self.clock() * 1000)
        await self.store.set_setting(REVOKED + box_id, str(now))
        await self.store.audit("box.preview.revoked", box_id, actor=actor(request), result="ok")
        return web.json_response({"box": box_id, "revoked_before": now / 1000})

    # ----------------------------------------------------------------- proxy
    @staticmethod
    def _target(request: web.Request) -> tuple[str, int]:
        box, raw_port = request.match_info["box"], request.match_info["port"]
        if not v.BOX_ID_RE.fullmatch(box):
            raise RemoteError(ErrorCode.INVALID, f"{box[:40]!r} is not a box id")
        if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535 or len(raw_port) > 5:
            raise RemoteError(ErrorCode.INVALID, f"port must be 1-65535, got {raw_port[:10]!r}")
        return box, int(raw_port)

    async def slash(self, request: web.Request) -> web.StreamResponse:
        box, port = self._target(request)
        raise web.HTTPPermanentRedirect(f"/preview/{box}/{port}/" + (
            f"?{request.query_string}" if request.query_string else ""))

    def _cookie(self, response: web.StreamResponse, token: str, box: str, port: int,
                expires: float) -> None:
        response.set_cookie(PREVIEW_COOKIE, token, path=f"/preview/{box}/{port}/",
                            max_age=max(1, int(expires - self.clock())), httponly=True,
                            secure=self.https, samesite="None" if self.https else "Lax")

    async def _operator(self, request: web.Request) -> bool:
        """A bearer key or a live session with at least the operator role."""
        header = request.headers.get("Authorization", "")
        row: dict[str, Any] | None = None
        if header.startswith("Bearer "):
            row = await self.store.api_key_by_hash(hash_secret(header[7:].strip()))
        elif request.cookies.get(SESSION_COOKIE):
            row = await self.store.session_by_hash(hash_secret(request.cookies[SESSION_COOKIE]))
        return row is not None and roles.allows(str(row.get("role", "admin")), roles.OPERATOR)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        box, port = self._target(request)
        link = request.query.get(TOKEN_PARAM)
        if link is not None:  # a first visit: check, set the cookie, go to the clean URL
            expires = await self.check(link, box, port)
            query = [(k, val) for k, val in request.query.items() if k != TOKEN_PARAM]
            clean = request.path + (f"?{urlencode(query)}" if query else "")
            response = web.HTTPSeeOther(clean)
            self._cookie(response, link, box, port, expires)
            raise response
        fresh: tuple[str, float] | None = None
        cookie = request.cookies.get(PREVIEW_COOKIE)
        if cookie is not None:
            await self.check(cookie, box, port)
        elif await self._operator(request):
            token, expires = await self.sign(box, port, DEFAULT_TTL_S)
            fresh = (token, expires)
        else:
            return unauthorized(f"a preview needs its link (hub box port {box} {port}), or "
                                "a signed-in operator")
        target = "/" + request.match_info["tail"] + (
            f"?{request.query_string}" if request.query_string else "")
        async with self.channels.boxes.activity.using(box):  # the janitor's idle TTL
            return await self._forward(request, box, port, target, fresh)

    async def _forward(self, request: web.Request, box: str, port: int, target: str,
                       fresh: tuple[str, float] | None) -> web.StreamResponse:
        headers = _forwarded(request, port)
        session = await self.channels.open_port(box, port)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await proxy_websocket(request, session, target, port)

        def decorate(response: web.StreamResponse) -> None:
            if fresh is not None:  # the page's own requests carry no session: a cookie
                self._cookie(response, fresh[0], box, port, fresh[1])

        return await proxy_http(request, session, target, headers, decorate)


def _forwarded(request: web.Request, port: int) -> list[tuple[str, str]]:
    """The request's headers as the box's server gets them: hop-by-hop headers, credentials
    and the hub's cookies removed; ``Host`` the box's own address; X-Forwarded-* added."""
    out = [("Host", f"127.0.0.1:{port}")]
    for name, value in request.headers.items():
        key = name.lower()
        if key in HOP_BY_HOP or key in ("authorization", "cookie") or key.startswith("sec-websocket"):
            continue
        out.append((name, value))
    kept = [f"{k}={val}" for k, val in request.cookies.items()
            if k not in (SESSION_COOKIE, PREVIEW_COOKIE)]
    if kept:
        out.append(("Cookie", "; ".join(kept)))
    prefix = "/".join(request.path.split("/")[:4])
    out += [("X-Forwarded-Host", request.host), ("X-Forwarded-Proto", request.scheme),
            ("X-Forwarded-Prefix", prefix)]
    return out
