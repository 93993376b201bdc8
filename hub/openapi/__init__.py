"""The OpenAPI 3.1 document of the hub's REST API, made from the app's own route table.

- :mod:`hub.openapi.spec`: :func:`operation`, the declaration each route handler carries;
- :mod:`hub.openapi.models`: the request and answer bodies (pydantic);
- :mod:`hub.openapi.build`: walks an app's router into the document (``GET /api/openapi.json``);
- :mod:`hub.openapi.elsewhere`: declarations of the routes whose handlers live outside the
  route modules (``/metrics``, ``/mcp``) and the routes left out, each with its reason;
- :mod:`hub.openapi.render`: the operations as Markdown in docs/api.md.

Pinned by tests/test_openapi.py and tests/test_openapi_fuzz.py.
"""

from hub.openapi.spec import (
    HTML,
    JSON,
    NDJSON,
    OCTETS,
    SSE,
    Operation,
    Param,
    Reply,
    int_or_empty,
    operation,
)

__all__ = ["HTML", "JSON", "NDJSON", "OCTETS", "SSE", "Operation", "Param", "Reply",
           "int_or_empty", "operation"]
