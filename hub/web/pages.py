"""The hub's own web pages: four HTML shells and the static files they load.

Why the hub serves them itself: a hub runs on machines with no internet and no front-end tool
chain, so the pages are plain files shipped in the package (``hub/web/static/``), loaded
as-is by the browser (ES modules, no build step, nothing from a CDN). The HTML carries no data
and no inline script or style (the hub's CSP forbids both), so every page route is public;
what a page shows it fetches from the REST API with the visitor's session, and a signed-out
visitor is sent to ``/signin`` by the page's own script (the routes are ``PUBLIC`` in
:data:`hub.roles.ROUTE_ROLES`).

Caching: the file names carry no content hash (there is no build step to add one), so every
answer says ``no-cache`` with a strong ``ETag``: the browser revalidates each load (a ``304``,
no body) and an upgraded hub's scripts are picked up at once. Pinned by
``tests/web/test_pages.py``.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from hub.openapi import HTML, Reply, operation

STATIC_DIR = Path(__file__).parent / "static"

# Page routes (no data in them, hence public) and the file each serves.
PAGES = {
    "/": "index.html",
    "/chat": "chat.html",
    "/history": "history.html",
    "/signin": "signin.html",
}

# Explicit types for what the pages use: the platform's mimetypes table varies (some map .js
# to application/x-javascript, and module scripts need a JavaScript type under nosniff).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
CACHE_CONTROL = "no-cache"


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


class Pages:
    """Serves :data:`PAGES` and ``/static/…`` from ``root``, read once at start: the files
    are part of the installed package and do not change while the hub runs."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.root = root.resolve()
        self._files: dict[str, _File] = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                rel = path.relative_to(self.root).as_posix()
                self._files[rel] = self._load(path)

    @staticmethod
    def _load(path: Path) -> _File:
        body = path.read_bytes()
        kind = CONTENT_TYPES.get(path.suffix.lower()) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        return _File(body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def routes(self) -> list[web.RouteDef]:
        out = [web.get(route, self._page(name)) for route, name in PAGES.items()]
        out.append(web.get("/static/{path:.+}", self.static))
        return out

    def _page(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @operation(f"The {name.removesuffix('.html')} page", tag="pages", replies=(
            Reply(200, "the page: an HTML shell with no data in it (its script fetches "
                  "what it shows from the API)", {"type": "string"}, HTML),
            Reply(304, "not modified (`If-None-Match` named its ETag)")))
        async def handler(request: web.Request) -> web.StreamResponse:
            return self._answer(request, name)

        return handler

    @operation("The pages' CSS, scripts and images", tag="pages", replies=(
        Reply(200, "the file, with an `ETag` and `Cache-Control: no-cache`",
              {"type": "string"}, "*/*", headers={"ETag": "the file's strong ETag"}),
        Reply(304, "not modified (`If-None-Match` named its ETag)")), errors=(404,))
    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._answer(request, request.match_info["path"])

    def _answer(self, request: web.Request, rel: str) -> web.StreamResponse:
        # Only names found in the tree at start are served: no path is ever joined from the
        # request, so ``..`` or an absolute path can reach nothing else.
        found = self._files.get(rel)
        if found is None:
            # ascii(): a reason may hold no CR or LF (aiohttp raises: a 500 for /static/%0D
            # that schemathesis found; tests/test_openapi_regressions.py).
            raise web.HTTPNotFound(reason=f"no file {ascii(rel[:200])}")
        headers = {"Cache-Control": CACHE_CONTROL, "ETag": found.etag}
        if found.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
