"""``GET /api/openapi.json``: the document of the app that serves it, with no credentials.

Built on first request from ``request.app``'s router (every route is registered by then) and
kept: the routes of a running hub do not change. Public because it describes only what the
hub's docs already say; it holds no data. Pinned by tests/test_openapi.py::
test_the_spec_is_served_without_auth.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hub.openapi.build import build_spec
from hub.openapi.spec import Reply, operation

PATH = "/api/openapi.json"


class OpenApiRoute:
    def __init__(self) -> None:
        self._doc: dict[str, Any] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.document)]

    @operation("This document", tag="health", description="The OpenAPI 3.1 document of "
               "this hub's REST API, made from its own route table.",
               replies=(Reply(200, "the document", {"type": "object"}),))
    async def document(self, request: web.Request) -> web.Response:
        if self._doc is None:
            self._doc = build_spec(request.app)
        return web.json_response(self._doc)
