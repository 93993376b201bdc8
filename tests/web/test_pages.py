"""Serving the pages (hub/web/pages.py), without a browser: the routes answer with the right
content types and cache headers, nothing outside the static tree can be reached, and the files
keep to the CSP (no inline script, style or handlers; no HTML strings built from data).

The in-process tests use the page app alone (aiohttp's test client); one test asks a real hub,
where ``https://HUB/`` used to answer 401.
"""

from __future__ import annotations

import re
import ssl
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from hub.web.pages import PAGES, STATIC_DIR, Pages
from tests.cluster import Hub

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
async def client(aiohttp_client) -> Client:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_routes(Pages().routes())
    return await aiohttp_client(app)


async def test_every_page_is_its_html_shell(client: Client) -> None:
    for route, name in PAGES.items():
        resp = await client.get(route)
        assert resp.status == 200, route
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert await resp.read() == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize("path, kind", [
    ("/static/style.css", "text/css; charset=utf-8"),
    ("/static/js/api.js", "text/javascript; charset=utf-8"),
    ("/static/js/markdown.js", "text/javascript; charset=utf-8"),
    ("/static/favicon.svg", "image/svg+xml"),
])
async def test_static_files_have_their_content_types(client: Client, path: str, kind: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == kind


async def test_files_are_revalidated_by_etag(client: Client) -> None:
    first = await client.get("/static/js/dashboard.js")
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache" and etag.startswith('"')
    again = await client.get("/static/js/dashboard.js", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    other = await client.get("/static/js/dashboard.js", headers={"If-None-Match": '"stale"'})
    assert other.status == 200 and await other.read()


@pytest.mark.parametrize("path", [
    "/static/nope.js", "/static/../pages.py", "/static/%2e%2e/pages.py", "/static/js/../../pages.py",
    "/static//etc/passwd", "/static/js",
])
async def test_nothing_outside_the_static_tree(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404, path
    assert b"import" not in await resp.read()


def test_the_files_keep_to_the_content_security_policy() -> None:
    """script-src 'self' and style-src 'self': no inline <script> or <style>, no on* handler
    or style attribute in the markup; and the scripts never parse HTML from strings."""
    for html in STATIC_DIR.glob("*.html"):
        text = html.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), html.name
        assert "<style" not in text and not re.search(r"\sstyle=", text), html.name
        assert not re.search(r"\son[a-z]+=", text), html.name
        assert "https://" not in text and "http://" not in text, f"{html.name} loads nothing from elsewhere"
    for js in (STATIC_DIR / "js").glob("*.js"):
        text = js.read_text()
        code = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith(("//", "*", "/*")))
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                       "new Function", "DOMParser"):
            assert banned not in code, f"{js.name} uses {banned}"
        assert len(text.splitlines()) < 400, f"{js.name} is too long to read"


def test_a_real_hub_serves_its_pages_without_credentials(hub: Hub) -> None:
    ctx = ssl.create_default_context(cafile=str(hub.dir / "tls.crt"))
    ctx.check_hostname = False
    for path in ("/", "/chat", "/history", "/signin", "/static/js/api.js"):
        with urllib.request.urlopen(hub.url + path, context=ctx, timeout=30) as resp:
            assert resp.status == 200, path
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
            body = resp.read()
            assert body == (STATIC_DIR / ("js/api.js" if path.endswith(".js") else PAGES[path])).read_bytes()


def test_the_package_ships_every_static_file() -> None:
    """pyproject's package-data reaches two levels under static/: nothing may sit deeper."""
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            assert len(path.relative_to(STATIC_DIR).parts) <= 2, f"{path} would not be installed"
    assert Path(STATIC_DIR, "js").is_dir()
