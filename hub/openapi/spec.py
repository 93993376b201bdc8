"""What a route declares about itself for the OpenAPI document, and how it declares it.

Why a decorator on the handler: aiohttp's route table (``web.get(path, handler)``) has no room
for metadata, but every route it holds keeps its handler. :func:`operation` stores an
:class:`Operation` on the handler function, and :func:`hub.openapi.build.build_spec` walks the
live app's router and reads it back: the document is made from the very table aiohttp serves,
so a route added without a declaration fails ``tests/test_openapi.py`` instead of drifting out
of the docs. The role a route needs is not declared here: it is read from
:data:`hub.roles.ROUTE_ROLES`, the table the auth middleware enforces.

Bodies and replies are pydantic models (their JSON Schema goes into ``components``) or plain
JSON-Schema dicts. Pure data: no aiohttp import. Pinned by tests/test_openapi.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
ATTR = "_openapi_operation"
# A body's schema: a pydantic model, any type pydantic can describe (``list[Model]``), or a
# JSON-Schema dict used as it is.
Schema = Any

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
OCTETS = "application/octet-stream"
HTML = "text/html"


@dataclass(frozen=True)
class Param:
    """A query, path or header parameter. Path parameters are found from the route itself
    (``{id}``); declare one only to give it a schema or a description."""

    name: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    description: str = ""
    where: Literal["query", "path", "header"] = "query"
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """One documented answer: a status, what it means, and its body (a model, a JSON Schema,
    or none) in ``content_type``. ``headers`` maps a response header to its description."""

    status: int
    description: str
    body: Schema | None = None
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """One route's declaration. ``errors`` lists the statuses answered in the hub's error
    shape beyond those the builder adds by itself (401/403 where credentials are needed, 400
    where a body or query is read, 404 where the path names something)."""

    summary: str
    description: str = ""
    tag: str = ""
    body: Schema | None = None
    body_content_type: str = JSON
    body_required: bool = True
    query: tuple[Param, ...] = ()
    replies: tuple[Reply, ...] = ()
    errors: tuple[int, ...] = ()
    path_params: tuple[Param, ...] = ()
    extensions: dict[str, Any] = field(default_factory=dict)


MAX_INT64 = 2**63 - 1  # the largest id or cursor the hub's store holds


def int_or_empty(low: int = 0, high: int = MAX_INT64) -> dict[str, Any]:
    """The schema of an integer query parameter read by :func:`hub.events_api.int_param`:
    an integer in ``[low, high]``, or empty (``?limit=``), which means the default."""
    return {"anyOf": [{"type": "integer", "minimum": low, "maximum": high},
                      {"type": "string", "maxLength": 0}]}


def cursor(description: str) -> Param:
    """A ``?after=`` sequence number that must be given as digits when present."""
    return Param("after", {"type": "integer", "minimum": 0, "maximum": MAX_INT64}, description)


def operation(summary: str, **fields: Any) -> Callable[[F], F]:
    """Declare a route handler's operation (see :class:`Operation` for the fields). The
    handler is returned unchanged: aiohttp calls it exactly as before."""
    declared = Operation(summary=summary, **fields)

    def mark(handler: F) -> F:
        setattr(handler, ATTR, declared)
        return handler

    return mark


def declared(handler: Any) -> Operation | None:
    """The :class:`Operation` a handler (function or bound method) was declared with."""
    found = getattr(handler, ATTR, None)
    return found if isinstance(found, Operation) else None
