"""Declarations of the routes whose handlers live outside the route modules, and the routes
the document leaves out, each with its reason.

``/metrics`` (hub/metrics.py) and ``/mcp`` (hub/mcp/frontend.py) are registered by
hub/app.py with handlers that know nothing of OpenAPI; they are declared here, keyed by
``(method, route)`` as aiohttp names them. The builder uses these only for routes the live
router holds, and tests/test_openapi.py::test_every_route_is_in_the_spec fails on a key here
that names no route, so this table cannot outlive its routes either.
"""

from __future__ import annotations

from hub import roles
from hub.openapi.spec import JSON, SSE, Operation, Reply

_MCP = ("The MCP front-end (streamable HTTP, docs/mcp.md): JSON-RPC messages of the Model "
        "Context Protocol, for MCP clients (the `mcp` SDK, chatbots), not for plain REST "
        "calls. Each tool checks the caller's role itself.")

ELSEWHERE: dict[tuple[str, str], Operation] = {
    ("GET", "/metrics"): Operation(
        summary="Prometheus metrics", tag="metrics",
        description="The Prometheus text format; a viewer key is enough to scrape it.",
        replies=(Reply(200, "the metrics", {"type": "string"},
                       "text/plain; version=0.0.4; charset=utf-8"),)),
    ("POST", "/mcp"): Operation(
        summary="MCP: send a JSON-RPC message", tag="mcp", description=_MCP + " The client "
        "must accept both `application/json` and `text/event-stream`.",
        body={"type": "object", "description": "a JSON-RPC 2.0 message (or a batch)"},
        replies=(Reply(200, "the answer, as JSON or as an event stream",
                       {"type": "object"}, JSON),
                 Reply(200, "the answer as an event stream", {"type": "string"}, SSE),
                 Reply(202, "a notification or response was accepted")),
        errors=(400, 404, 406, 415)),
    ("GET", "/mcp"): Operation(
        summary="MCP: the server's event stream of a session", tag="mcp",
        description=_MCP + " Open while the session lasts.",
        replies=(Reply(200, "messages from the server, endless", {"type": "string"}, SSE),),
        errors=(400, 404, 405, 406)),
    ("DELETE", "/mcp"): Operation(
        summary="MCP: end a session", tag="mcp", description=_MCP,
        replies=(Reply(200, "the session ended"),), errors=(400, 404, 405)),
}

# Routes the document leaves out, with the reason it says so.
EXCLUDED: dict[tuple[str, str], str] = {
    ("GET", "/spoke/connect"): "the spokes' WebSocket link: a signed handshake, then the wire "
    "protocol of docs/protocol.md, which OpenAPI does not describe",
    ("GET", "/api/boxes/{id}/pty"): "a terminal in a box: a WebSocket of terminal bytes and "
    "JSON control messages (hub/pty_api.py), which OpenAPI does not describe; see the "
    "PTY section of docs/api.md",
    ("*", "/preview/{box}/{port}/{tail}"): "port previews (hub/preview.py): whatever the "
    "box's server answers, any method, HTTP or WebSocket; docs/api.md describes the links",
    ("*", "/preview/{box}/{port}"): "redirects to the same preview with a trailing slash",
}

# Left out as a kind (hub/roles.py ``PEER``): the hub-to-hub routes are no part of the public
# API (hub/cluster/peer_api.py: the cluster secret, binary frames between hubs).
INTERNAL_REASON = ("hub-to-hub calls between the hubs of a cluster (hub/cluster/peer_api.py), "
                   "guarded by the cluster secret: not part of the public API")


def excluded_internal(method: str, path: str) -> bool:
    """Whether ``method path`` is a hub-to-hub route, left out of the document. Pinned by
    tests/hub/test_peer_forwarding.py::test_the_peer_routes_are_internal."""
    return roles.rule_for(method, path) == roles.PEER
