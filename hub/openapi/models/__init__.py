"""The JSON bodies of the REST API as pydantic models: what a route reads (``…Body``, also
parsed with :func:`hub.http_util.parsed_body`, so the declared fields are the fields read) and
what it answers. Their JSON Schema is the OpenAPI document's ``components/schemas``.

Answers allow more properties than they list (a row may gain a column); a listed property is
always present unless its default says otherwise. Pinned by tests/test_openapi.py (the
schemas are valid) and tests/test_openapi_fuzz.py (real answers match them).
"""
