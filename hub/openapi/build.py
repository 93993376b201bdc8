"""The OpenAPI 3.1 document, built by walking an aiohttp app's router.

Every route aiohttp serves is looked at: its handler's declaration (:func:`hub.openapi.spec.
operation`), else one in :data:`hub.openapi.elsewhere.ELSEWHERE`, else it must be in
:data:`~hub.openapi.elsewhere.EXCLUDED` (or be a hub-to-hub route); anything else is reported as undeclared (and still
listed, as a stub, so the document never hides a route). The role comes from
:func:`hub.roles.rule_for`, the function the auth middleware asks, so the document says what
the hub enforces. ``HEAD`` follows ``GET`` and is not listed.

Added to each operation: the path parameters the route has, the error answers every route of
its kind can give (401/403 where credentials are needed, 400/413 where a JSON body is read,
404 where the path names something), its security schemes, and ``x-required-role``.
Pinned by tests/test_openapi.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from hub import roles
from hub.http_util import CSRF_HEADER, SESSION_COOKIE
from hub.openapi.elsewhere import ELSEWHERE, EXCLUDED, excluded_internal
from hub.openapi.models.common import Error
from hub.openapi.spec import JSON, Operation, Param, Reply, declared
from protocol.version import VERSION

REF = "#/components/schemas/{model}"
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ERRORS = {
    400: "`invalid`: a bad body, field or parameter",
    401: "`denied`: no valid credentials (`WWW-Authenticate: Bearer`)",
    403: "`denied`: the role is too low, a cross-site request, a missing CSRF token, or the "
         "spoke's policy refused it",
    404: "`not_found`: no such thing",
    405: "`invalid`: the method is not allowed",
    406: "`invalid`: the client does not accept the answer's type",
    413: "`invalid`: the body is too large",
    415: "`invalid`: the body's type is not accepted",
    429: "`busy`: too many requests, or the spoke's call slots are full",
    503: "`unavailable`: the spoke is not connected",
    504: "`timeout`: the spoke did not answer in time",
}
SECURITY_SCHEMES = {
    "bearerApiKey": {"type": "http", "scheme": "bearer",
                     "description": "An API key (`shk_…`): `hub apikey create`, or the "
                                    "local admin's in `admin.json`."},
    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                      "description": "A signed-in user's session (`POST /api/session`)."},
    "csrfToken": {"type": "apiKey", "in": "header", "name": CSRF_HEADER,
                  "description": "With the session cookie, on every write: the `csrf` of "
                                 "the session."},
    "relayToken": {"type": "http", "scheme": "bearer",
                   "description": "A spoke session's relay token (spokes only)."},
}
ROLE_TEXT = {
    roles.PUBLIC: "Public: no credentials.",
    roles.OWN_AUTH: "Its own credentials (below), not an API key or a session.",
}


@dataclass
class _Components:
    """The ``components/schemas`` being collected, by name; a name met twice must mean the
    same schema (two models of one name would otherwise overwrite each other)."""

    schemas: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, schema: dict[str, Any]) -> None:
        if self.schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas are named {name}")

    def schema_of(self, body: Any) -> dict[str, Any]:
        """A ``$ref`` to a model, a JSON-Schema dict as it is, or the inline schema of a type
        pydantic describes (``list[Model]``), its models added to the components."""
        if isinstance(body, dict):
            return body
        found = TypeAdapter(body).json_schema(ref_template=REF)
        for name, sub in found.pop("$defs", {}).items():
            self.add(name, sub)
        if isinstance(body, type) and issubclass(body, BaseModel):
            self.add(body.__name__, found)
            return {"$ref": REF.format(model=body.__name__)}
        return found


def _operation_id(method: str, path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root"
    return f"{method.lower()}_{slug}"


def _parameter(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": param.name, "in": param.where, "schema": param.schema}
    if param.description:
        out["description"] = param.description
    if param.required or param.where == "path":
        out["required"] = True
    return out


def _security(rule: str, method: str) -> list[dict[str, list[str]]]:
    if rule == roles.PUBLIC:
        return []
    if rule == roles.OWN_AUTH:
        return [{"relayToken": []}]
    cookie: dict[str, list[str]] = {"sessionCookie": []}
    if method in WRITES:
        cookie["csrfToken"] = []
    return [{"bearerApiKey": []}, cookie]


def _error_statuses(op: Operation, rule: str, has_path_params: bool) -> set[int]:
    statuses = set(op.errors)
    if rule not in (roles.PUBLIC, roles.OWN_AUTH):
        statuses |= {401, 403}
    if op.body is not None and op.body_content_type == JSON and rule != roles.OWN_AUTH:
        statuses |= {400, 413}
    if has_path_params:
        statuses.add(404)
    return statuses


def _responses(op: Operation, errors: set[int], parts: _Components) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_status: dict[int, list[Reply]] = {}
    for reply in op.replies:
        by_status.setdefault(reply.status, []).append(reply)
    for status in sorted(errors - set(by_status)):
        by_status[status] = [Reply(status, ERRORS.get(status, "an error"), Error)]
    for status in sorted(by_status):
        replies = by_status[status]
        entry: dict[str, Any] = {"description": "; or ".join(r.description for r in replies)}
        content = {r.content_type: {"schema": parts.schema_of(r.body)}
                   for r in replies if r.body is not None}
        if content:
            entry["content"] = content
        headers = {name: {"description": text, "schema": {"type": "string"}}
                   for r in replies for name, text in r.headers.items()}
        if status == 401 and errors and 401 in errors:
            headers.setdefault("WWW-Authenticate", {"description": "`Bearer`",
                                                    "schema": {"type": "string"}})
        if headers:
            entry["headers"] = headers
        out[str(status)] = entry
    return out


def operation_object(method: str, path: str, op: Operation, parts: _Components) -> dict[str, Any]:
    """One OpenAPI operation: the declaration, plus what the route table and the role table
    say about it."""
    rule = roles.rule_for(method, path) or roles.ADMIN  # the middleware's rule for the unlisted
    names = re.findall(r"\{([^}:]+)", path)
    declared_path = {p.name: p for p in op.path_params}
    params = [_parameter(declared_path.get(n, Param(n, where="path"))) for n in names]
    params += [_parameter(p) for p in op.query]
    role = ROLE_TEXT.get(rule, f"Needs the **{rule}** role (API key or signed-in user).")
    out: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": op.summary,
        "description": f"{op.description}\n\n{role}".strip(),
        "tags": [op.tag] if op.tag else [],
        "x-required-role": rule,
        "security": _security(rule, method),
    }
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": {
            op.body_content_type: {"schema": parts.schema_of(op.body)}}}
    out["responses"] = _responses(op, _error_statuses(op, rule, bool(names)), parts)
    out.update(op.extensions)
    return out


def declarations(app: web.Application) -> tuple[list[tuple[str, str, Operation]], list[str]]:
    """Every ``(method, route, declaration)`` of ``app``'s router, and the routes that have
    none (``METHOD /route``): the list tests/test_openapi.py requires to be empty."""
    found: list[tuple[str, str, Operation]] = []
    missing: list[str] = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        path, method = resource.canonical, route.method
        if (method, path) in EXCLUDED or excluded_internal(method, path):
            continue
        if method == "*":
            elsewhere = [(m, p) for (m, p) in ELSEWHERE if p == path]
            found += [(m, path, ELSEWHERE[(m, p)]) for (m, p) in elsewhere]
            if not elsewhere:
                missing.append(f"* {path}")
            continue
        op = declared(route.handler) or ELSEWHERE.get((method, path))
        if op is None:
            missing.append(f"{method} {path}")
            op = Operation(summary="(undeclared)", extensions={"x-undeclared": True})
        found.append((method, path, op))
    return found, missing


def build_spec(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes (no ``servers``: it describes the hub
    that serves it, at the origin it was fetched from)."""
    parts = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in declarations(app)[0]:
        paths.setdefault(path, {})[method.lower()] = operation_object(method, path, op, parts)
    parts.schema_of(Error)
    tags = sorted({t for ops in paths.values() for o in ops.values() for t in o["tags"]})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "spokehub hub API",
            "version": VERSION,
            "description": "The hub's REST API (docs/api.md). Errors are "
            "`{\"error\": {\"code\", \"message\"}}` with a typed code; bodies are JSON objects "
            "of at most 1 MiB; times are Unix seconds. Each operation's `x-required-role` is "
            "the least role it needs (`viewer` < `operator` < `admin`), or `public`, or "
            "`own-auth`.",
        },
        "tags": [{"name": t} for t in tags],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(parts.schemas.items())),
                       "securitySchemes": SECURITY_SCHEMES},
    }
