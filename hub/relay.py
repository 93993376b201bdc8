"""The model relay: spokes call hub-configured models through the hub, which adds the key.

Spokes use the official SDKs unchanged, pointed at ``/relay/openai/v1`` or
``/relay/anthropic``, with their session's relay token as the API key and the model *alias*
as the model name. The hub swaps in the real model name and key and streams the provider's
answer back byte for byte, so keys never leave the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel

from hub.http_util import read_limited
from hub.model_config import ModelsConfig
from hub.openapi import Reply, operation
from protocol.errors import ErrorCode

log = logging.getLogger("spokehub.hub.relay")
MAX_RELAY_BODY = 32 * 1024 * 1024
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class RelayErrorDetail(BaseModel):
    type: str
    code: str
    message: str


class RelayError(BaseModel):
    """The relay's own error shape: the providers' SDKs read ``error.type``."""

    error: RelayErrorDetail


def _relay_doc(provider: str) -> dict[str, Any]:
    """The OpenAPI declaration of a relay route: used by spokes (their session's relay
    token, the provider's official SDK), not by people; the answer is the provider's."""
    key = "`Authorization: Bearer <relay token>`"
    if provider == "anthropic":
        key += " or `x-api-key`"
    return {
        "description": f"For spokes, not people: {key}; the provider's request body with "
        "`model` set to an alias of this hub. The hub swaps in the real model and key and "
        "streams the provider's answer back as it comes (JSON, or SSE when `stream` is set).",
        "body": {"type": "object", "required": ["model"], "properties": {
            "model": {"type": "string", "description": f"an {provider} model alias"}}},
        "replies": (
            Reply(200, "the provider's answer, passed through (any status it gives)",
                  {"type": "object"}),
            Reply(400, "not JSON, or no `model`", RelayError),
            Reply(401, "the relay token is not valid (only connected spokes may relay)",
                  RelayError),
            Reply(404, f"no {provider} model alias of that name", RelayError),
            Reply(413, "body over 32 MiB", RelayError),
            Reply(502, "the model endpoint is unreachable", RelayError)),
    }


class Relay:
    def __init__(self, models: Callable[[], ModelsConfig],
                 spoke_for_token: Callable[[str], Awaitable[str | None]]) -> None:
        self._models = models
        self._spoke_for_token = spoke_for_token
        self._session: aiohttp.ClientSession | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/relay/openai/v1/chat/completions", self.openai),
            web.post("/relay/anthropic/v1/messages", self.anthropic),
        ]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _error(self, status: int, code: ErrorCode, message: str) -> web.Response:
        return web.json_response({"error": {"type": code.value, "code": code.value, "message": message}}, status=status)

    @operation("Model relay: OpenAI chat completions", tag="relay", **_relay_doc("openai"))
    async def openai(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return await self._forward(request, "openai", token, "/chat/completions")

    @operation("Model relay: Anthropic messages", tag="relay", **_relay_doc("anthropic"))
    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("x-api-key", "") or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return await self._forward(request, "anthropic", token, "/v1/messages")

    async def _forward(self, request: web.Request, provider: str, token: str, path: str) -> web.StreamResponse:
        spoke = await self._spoke_for_token(token) if token else None
        if spoke is None:
            return self._error(401, ErrorCode.DENIED, "relay token is not valid (only connected spokes may use the relay)")
        raw = await read_limited(request, MAX_RELAY_BODY)
        if raw is None:
            return self._error(413, ErrorCode.INVALID, "request too large")
        try:
            body = json.loads(raw)
            alias = body["model"]
        except (ValueError, KeyError, TypeError):
            return self._error(400, ErrorCode.INVALID, "body must be JSON with a 'model' alias")
        config = self._models().models.get(alias)
        if config is None or config.provider != provider:
            return self._error(404, ErrorCode.NOT_FOUND, f"no {provider} model alias {alias!r} at this hub")
        body["model"] = config.model
        headers = {"Content-Type": "application/json"}
        if provider == "openai":
            if config.api_key:
                headers["Authorization"] = f"Bearer {config.api_key}"
        else:
            headers["x-api-key"] = config.api_key
            headers["anthropic-version"] = request.headers.get("anthropic-version", "2023-06-01")
            if "anthropic-beta" in request.headers:
                headers["anthropic-beta"] = request.headers["anthropic-beta"]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=15))
        # A spoke that cancels a turn hangs up on us; aiohttp does not cancel the handler for
        # that, so watch the connection and drop the upstream request too (a model that is
        # still generating costs tokens and holds a slot at the provider).
        work = asyncio.ensure_future(self._relay(request, config.url() + path, body, headers, alias))
        while not work.done():
            await asyncio.wait([work], timeout=0.5)
            if not work.done() and (request.transport is None or request.transport.is_closing()):
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                log.info("relay to %s abandoned: the spoke hung up", alias)
                return web.Response(status=499)
        return work.result()

    async def _relay(self, request: web.Request, url: str, body: dict[str, Any], headers: dict[str, str],
                     alias: str) -> web.StreamResponse:
        assert self._session is not None
        try:
            upstream = await self._session.post(url, data=json.dumps(body).encode(), headers=headers)
        except (aiohttp.ClientError, OSError) as err:
            log.warning("relay to %s (%s) failed: %s", alias, url, err)
            return self._error(502, ErrorCode.UNAVAILABLE, f"model endpoint for {alias!r} is unreachable: {err}")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
