"""One error decoder and one pin check for every client (client/errors.py, protocol/pins.py).

The sync client, its one-shot exec (client/fast_exec.py) and the asyncio SDK are run against
a small aiohttp server that answers what a hub (or a proxy in front of one) may answer; each
must raise the same :class:`ApiError`. Over TLS, each must refuse a certificate that is not
the pinned one before sending anything.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from client.async_client import AsyncHubClient
from client.errors import ApiError, api_error
from client.http_client import HubClient
from hub import tls
from protocol.errors import ErrorCode, RemoteError
from protocol.pins import cert_pin

BOX = "bx_0123456789abcdef"

# (status, content type, body) -> (code, message)
CASES: list[tuple[int, str, bytes, ErrorCode, str]] = [
    (404, "application/json", b'{"error": {"code": "not_found", "message": "no box"}}',
     ErrorCode.NOT_FOUND, "no box"),
    (429, "application/json", b'{"error": {"code": "busy", "message": "later"}}', ErrorCode.BUSY, "later"),
    (400, "application/json", b'{"error": {"code": "brand_new", "message": "m"}}', ErrorCode.INTERNAL, "m"),
    (502, "text/html", b"<html>bad gateway</html>", ErrorCode.INTERNAL, "HTTP 502: b'<html>bad gateway</html>'"),
    (500, "application/json", b'{"detail": "x"}', ErrorCode.INTERNAL, "HTTP 500: b'{\"detail\": \"x\"}'"),
    (500, "application/json", b'{"error": "flat"}', ErrorCode.INTERNAL, "HTTP 500: b'{\"error\": \"flat\"}'"),
]


def test_api_error_decodes_the_hubs_error_document() -> None:
    for status, _, body, code, message in CASES:
        err = api_error(status, body)
        assert (err.code, err.message, err.status) == (code, message, status)
        assert isinstance(err, RemoteError)
    assert api_error(403, b'{"error": {"code": "denied"}}', "Forbidden").message == "Forbidden"
    assert api_error(403, b'{"error": {"code": "denied"}}').message == ""


def _app() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        status, ctype, body = CASES[int(request.query.get("case", request.match_info.get("case", "0")))][:3]
        return web.Response(status=status, body=body, content_type=ctype)

    async def exec_answer(request: web.Request) -> web.Response:
        case = json.loads(await request.read())["cmd"][0]
        status, ctype, body = CASES[int(case)][:3]
        return web.Response(status=status, body=body, content_type=ctype)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/api/case", answer)
    app.router.add_post(f"/api/boxes/{BOX}/exec", exec_answer)
    app.router.add_get("/api/ok", ok)
    return app


def _exec_listed(client: HubClient, arg: str) -> list[Any]:
    return list(client.exec_once(BOX, [arg]))


def _raised(fn: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fn()
    return caught.value


async def test_every_client_raises_the_same_api_error(aiohttp_server: Any) -> None:
    server = await aiohttp_server(_app())
    url = f"http://127.0.0.1:{server.port}"
    sync = HubClient(url, "key")
    try:
        async with AsyncHubClient(url, "key") as async_client:
            for i, (status, _, _, code, message) in enumerate(CASES):
                got = [
                    await asyncio.to_thread(_raised, functools.partial(sync.request, "GET", f"/api/case?case={i}")),
                    await asyncio.to_thread(_raised, functools.partial(_exec_listed, sync, str(i))),
                ]
                with pytest.raises(ApiError) as caught:
                    await async_client.request("GET", f"/api/case?case={i}")
                got.append(caught.value)
                assert [(e.code, e.message, e.status) for e in got] == [(code, message, status)] * 3
    finally:
        sync.close()


async def test_every_client_checks_the_pin_before_sending(aiohttp_server: Any, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    tls.ensure_self_signed(cert, key, ["127.0.0.1"])
    server = await aiohttp_server(_app(), ssl=tls.server_context(cert, key))
    url, right = f"https://127.0.0.1:{server.port}", tls.certificate_pin(cert)
    wrong = cert_pin(b"another certificate")
    assert right.startswith("sha256:") and right != wrong

    def sync_calls(pin: str) -> list[Any]:
        """The answers of a JSON call and a one-shot exec (or the error each raised)."""
        out: list[Any] = []
        client = HubClient(url, "key", pin)
        for call in (lambda: client.request("GET", "/api/ok"),
                     lambda: list(HubClient(url, "key", pin).exec_once(BOX, ["0"]))):
            try:
                out.append(call())
            except RemoteError as err:
                out.append(err)
        client.close()
        return out

    ok, reached = await asyncio.to_thread(sync_calls, right.upper().replace("SHA256:", "sha256:"))
    assert ok == {"ok": True}  # hex case ignored
    assert isinstance(reached, ApiError) and reached.code is ErrorCode.NOT_FOUND  # it got through
    for refused in await asyncio.to_thread(sync_calls, wrong):
        assert type(refused) is RemoteError and refused.code is ErrorCode.DENIED
        assert refused.message == f"the hub's certificate does not match the pin (got {right[:23]}…)"
    async with AsyncHubClient(url, "key", wrong) as async_client:
        with pytest.raises(RemoteError) as caught:
            await async_client.request("GET", "/api/ok")
        assert caught.value.code is ErrorCode.DENIED
