"""Roles, and the one table that says which role each REST route needs.

Users and API keys carry one of three roles, ranked ``viewer`` < ``operator`` < ``admin``:

- ``viewer``: read only (GETs of cluster state: spokes, boxes, workstreams, events, models).
- ``operator``: also boxes, exec, files, pings, workstreams and approvals.
- ``admin``: everything, including join tokens, API keys, users and spoke revocation.

:data:`ROUTE_ROLES` maps ``(method, route)`` to the least role a route needs, or to
:data:`PUBLIC` (no credentials: health, metrics, the pages, sign-in) or :data:`OWN_AUTH` (the
route authenticates itself: the spoke link, the model relay); the hub-to-hub routes under
:data:`PEER_PREFIXES` are their own kind, :data:`PEER`: no user or key may call them, the
cluster secret guards them (hub/cluster/peer_api.py). The auth middleware
(:func:`hub.http_util.auth_middleware`) looks every request up here, so no handler can forget
a check; a route missing from the table is refused to all but admins, and
``tests/test_roles.py::test_every_route_has_a_role_rule`` walks the app's router and fails on
any route the table does not name. **Adding a route? Add its line here.**

Routes are named as aiohttp's ``resource.canonical`` (``/api/boxes/{id}/exec``); ``HEAD``
follows ``GET``; ``*`` matches any method (``/mcp``, whose tools check roles themselves:
:func:`hub.mcp.cluster_tools.tool_registrar`). Pure data: importable anywhere in ``hub/``.
"""

from __future__ import annotations

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)  # in rank order
PUBLIC = "public"
OWN_AUTH = "own-auth"
PUBLIC_PREFIXES = ("/static/",)  # the pages' files: no data in them
# /preview/: a signed link's cookie, or a session or key with the operator role (hub/preview.py)
OWN_AUTH_PREFIXES = ("/spoke/", "/relay/", "/preview/")
# Hub-to-hub calls (hub/cluster/peer_api.py): the cluster secret, checked by the handler,
# which must carry the PEER_GUARD mark (hub.cluster.peer_api.peer_guarded) or the middleware
# refuses the request. No user, key or session is ever accepted there; not in the OpenAPI.
PEER = "peer-secret"
PEER_PREFIXES = ("/internal/peer/",)
PEER_GUARD = "spokehub_peer_guarded"

_RANK = {role: i for i, role in enumerate(ROLES)}

ROUTE_ROLES: dict[tuple[str, str], str] = {
    # open: health, the web pages (they carry no data), sign-in itself
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/signin"): PUBLIC,
    ("GET", "/chat"): PUBLIC,
    ("GET", "/history"): PUBLIC,
    ("GET", "/favicon.ico"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("POST", "/api/session"): PUBLIC,
    ("GET", "/api/openapi.json"): PUBLIC,  # the API's description: no data in it
    # their own auth: the spoke link (signed challenge) and the model relay (relay token)
    ("GET", "/spoke/connect"): OWN_AUTH,
    ("POST", "/relay/openai/v1/chat/completions"): OWN_AUTH,
    ("POST", "/relay/anthropic/v1/messages"): OWN_AUTH,
    # the signed-in user's own session and password (the handlers check it is their own)
    ("GET", "/api/session"): VIEWER,
    ("DELETE", "/api/session"): VIEWER,
    ("PUT", "/api/users/{name}/password"): VIEWER,
    # cluster state: read only
    ("GET", "/api/info"): VIEWER,
    ("GET", "/metrics"): VIEWER,  # Prometheus scrapes with a viewer key as its bearer token
    ("GET", "/api/spokes"): VIEWER,
    ("GET", "/api/boxes"): VIEWER,
    ("GET", "/api/boxes/{id}/logs"): VIEWER,
    ("GET", "/api/boxes/{id}/stats"): VIEWER,
    ("GET", "/api/models"): VIEWER,
    ("GET", "/api/ws"): VIEWER,
    ("GET", "/api/ws/{id}"): VIEWER,
    ("GET", "/api/ws/{id}/events"): VIEWER,
    ("GET", "/api/ws/{id}/stream"): VIEWER,
    ("GET", "/api/usage"): VIEWER,
    ("GET", "/api/workers/active"): VIEWER,
    ("GET", "/api/runs/{id}"): VIEWER,
    ("GET", "/api/runs/{id}/inspect"): VIEWER,
    ("GET", "/api/events"): VIEWER,
    ("GET", "/api/events/stream"): VIEWER,
    ("GET", "/api/audit"): VIEWER,
    ("GET", "/api/history"): VIEWER,
    ("GET", "/api/cluster"): VIEWER,
    ("*", "/mcp"): VIEWER,  # each tool checks its own role
    # operating the cluster: boxes, exec, files, pings, workstreams, approvals
    ("POST", "/api/spokes/{name}/ping"): OPERATOR,
    ("POST", "/api/boxes"): OPERATOR,
    ("DELETE", "/api/boxes/{id}"): OPERATOR,
    ("POST", "/api/boxes/{id}/pause"): OPERATOR,
    ("POST", "/api/boxes/{id}/resume"): OPERATOR,
    ("POST", "/api/boxes/{id}/exec"): OPERATOR,
    ("GET", "/api/boxes/{id}/pty"): OPERATOR,  # a terminal in the box (WebSocket)
    ("POST", "/api/boxes/{id}/ports"): OPERATOR,  # a signed preview link
    ("DELETE", "/api/boxes/{id}/ports"): OPERATOR,  # revoke the box's preview links
    ("PUT", "/api/boxes/{id}/file"): OPERATOR,
    # reading a box's files is reading what its commands made (keys, data): not for viewers
    ("GET", "/api/boxes/{id}/file"): OPERATOR,
    ("POST", "/api/ws"): OPERATOR,
    ("POST", "/api/ws/{id}/messages"): OPERATOR,
    ("POST", "/api/ws/{id}/approvals/{call_id}"): OPERATOR,
    ("POST", "/api/ws/{id}/cancel"): OPERATOR,
    ("POST", "/api/ws/{id}/close"): OPERATOR,
    # administering the hub: join tokens, API keys, users, spoke revocation
    ("POST", "/api/tokens"): ADMIN,
    ("GET", "/api/tokens"): ADMIN,
    ("DELETE", "/api/tokens/{id}"): ADMIN,
    ("POST", "/api/apikeys"): ADMIN,
    ("GET", "/api/apikeys"): ADMIN,
    ("DELETE", "/api/apikeys/{id}"): ADMIN,
    ("GET", "/api/users"): ADMIN,
    ("POST", "/api/users"): ADMIN,
    ("DELETE", "/api/users/{name}"): ADMIN,
    ("DELETE", "/api/spokes/{name}"): ADMIN,
}


def rule_for(method: str, route: str) -> str | None:
    """The table's rule for ``method`` on the route named ``route`` (its canonical form),
    or None when the table does not name it. Pinned by
    ``tests/test_roles.py::test_every_route_has_a_role_rule``."""
    method = "GET" if method == "HEAD" else method.upper()
    for key in ((method, route), ("*", route)):
        if key in ROUTE_ROLES:
            return ROUTE_ROLES[key]
    if method == "GET" and (route + "/").startswith(PUBLIC_PREFIXES):
        return PUBLIC
    if route.startswith(OWN_AUTH_PREFIXES):
        return OWN_AUTH
    if route.startswith(PEER_PREFIXES):
        return PEER
    return None


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` is at least ``needed`` (an unknown role allows nothing). Pinned by
    ``tests/test_roles.py`` (a viewer refused on POST, an operator refused a token)."""
    return role in _RANK and needed in _RANK and _RANK[role] >= _RANK[needed]


def check_role(value: object) -> str:
    """``value`` if it names a role, else ValueError with the message the API returns."""
    if value not in _RANK:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {str(value)[:40]!r}")
    return str(value)
