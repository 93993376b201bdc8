"""Security headers on every response the hub sends: pages, API, errors, streams.

Added from aiohttp's ``on_response_prepare`` signal rather than a middleware: it runs for
every response just before its headers go out, including streamed ones a handler prepares
itself (NDJSON exec output, the MCP event streams, WebSocket upgrades) and the error answers
of the router, which a middleware that edits the returned response would miss.

The pages load only their own files (``script-src 'self'``: no inline script, so an injected
``<script>`` in a reply does not run), cannot be framed, send no referrer, and are not
content-sniffed. ``Strict-Transport-Security`` goes out when the hub's URL is HTTPS; a browser
ignores it on a connection whose certificate it did not trust (RFC 6797 §8.1), so the first
visit to a self-signed hub still lets its user accept the certificate.
Pinned by tests/test_web_auth.py::test_security_headers_on_pages_api_and_errors.
"""

from __future__ import annotations

from aiohttp import web

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HSTS = "max-age=31536000"


def security_headers(https: bool) -> dict[str, str]:
    """The headers every response carries (HSTS only when ``https``). Pinned by
    tests/test_web_auth.py::test_security_headers_on_pages_api_and_errors."""
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if https:
        headers["Strict-Transport-Security"] = HSTS
    return headers


def install_security_headers(app: web.Application, *, https: bool) -> None:
    """Add :func:`security_headers` to every response of ``app`` (a handler's own value of
    one of them wins). Pinned by the same test, on a page, an API answer and errors."""
    fixed = security_headers(https)

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        if response.status == 101:  # a WebSocket upgrade (a spoke's link): nothing a browser
            return  # renders, and thousands of them would each keep these headers
        for name, value in fixed.items():
            response.headers.setdefault(name, value)

    app.on_response_prepare.append(add)
