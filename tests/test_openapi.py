"""The OpenAPI document: made from the app's own route table, every route in it (or left out
with a reason), every operation naming its role and errors, valid schemas, served without
credentials, rendered in docs/api.md; and the request models parsing bodies with the messages
``want`` always gave. The router walks need no server; one test starts a real hub.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from jsonschema import Draft202012Validator

from hub import roles
from hub.app import Hub as HubApp
from hub.app import HubConfig
from hub.http_util import fields_of
from hub.openapi import render
from hub.openapi.build import build_spec, declarations
from hub.openapi.elsewhere import ELSEWHERE, EXCLUDED, excluded_internal
from hub.openapi.models import cluster, workstreams
from protocol.errors import RemoteError
from tests.cluster import Hub
from tests.web_client import Web

METHODS = ("get", "post", "put", "delete", "patch")


@pytest.fixture(scope="module")
def app_and_spec(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    app = HubApp(HubConfig(data_dir=tmp_path_factory.mktemp("openapi") / "hub")).make_app()
    return app, build_spec(app)


def router_routes(app: Any) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.resource is not None and r.method != "HEAD"}


def test_every_route_is_in_the_spec(app_and_spec: tuple[Any, dict[str, Any]]) -> None:
    app, spec = app_and_spec
    routes = router_routes(app)
    assert len(routes) > 45
    assert declarations(app)[1] == [], "routes without an @operation declaration"
    listed = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if m in METHODS}
    for method, path in routes:
        if (method, path) in EXCLUDED:
            assert EXCLUDED[(method, path)], "an exclusion says why"
            assert path not in spec["paths"]
        elif excluded_internal(method, path):  # hub-to-hub (hub/cluster/peer_api.py)
            assert path not in spec["paths"]
        elif method == "*":
            assert any(p == path for _m, p in listed), f"* {path}"
        else:
            assert (method, path) in listed, f"{method} {path} is not in the spec"
    # ...and every operation of the spec is a route aiohttp serves.
    for method, path in listed:
        assert (method, path) in routes or ("*", path) in routes, f"{method} {path}"
    # The tables kept beside the route modules name only routes that exist.
    for method, path in [*ELSEWHERE, *EXCLUDED]:
        assert (method, path) in routes or ("*", path) in routes, f"stale entry {method} {path}"


def test_every_operation_names_its_role_and_errors(
        app_and_spec: tuple[Any, dict[str, Any]]) -> None:
    _app, spec = app_and_spec
    ids = set()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            rule = roles.rule_for(method.upper(), path)
            assert op["x-required-role"] == rule, (method, path)
            assert op["summary"] and op["operationId"] not in ids
            ids.add(op["operationId"])
            statuses = set(op["responses"])
            assert any(s.startswith("2") for s in statuses), (method, path)
            if rule in roles.ROLES:
                assert {"401", "403"} <= statuses, (method, path)
                assert f"**{rule}**" in op["description"]
                assert op["security"][0] == {"bearerApiKey": []}
            if "{" in path:
                assert "404" in statuses, (method, path)
            for status, answer in op["responses"].items():
                if status >= "400" and path.startswith("/api/"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)
    assert spec["paths"]["/api/openapi.json"]["get"]["security"] == []
    assert spec["paths"]["/relay/openai/v1/chat/completions"]["post"]["security"] == [
        {"relayToken": []}]
    writes = spec["paths"]["/api/boxes"]["post"]["security"]
    assert {"sessionCookie": [], "csrfToken": []} in writes


def test_the_schemas_are_valid_and_the_document_loads(
        app_and_spec: tuple[Any, dict[str, Any]]) -> None:
    _app, spec = app_and_spec
    assert spec["openapi"].startswith("3.1")
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    text = json.dumps(spec)
    for ref in set(part.split('"')[0] for part in text.split('"$ref": "')[1:]):
        assert ref.removeprefix("#/components/schemas/") in spec["components"]["schemas"], ref
    loaded = schemathesis.openapi.from_dict(json.loads(text))
    assert len(list(loaded.get_all_operations())) == sum(len(o) for o in spec["paths"].values())
    # The error shape, exactly as the hub answers it, and nothing else.
    defs = json.loads(text.replace("#/components/schemas/", "#/$defs/"))["components"]["schemas"]
    validator = Draft202012Validator({**defs["Error"], "$defs": defs})
    assert validator.is_valid({"error": {"code": "not_found", "message": "no box bx_0"}})
    assert not validator.is_valid({"error": {"code": "oops", "message": "x"}})
    assert not validator.is_valid({"message": "x"})


def test_docs_api_md_is_current(app_and_spec: tuple[Any, dict[str, Any]]) -> None:
    _app, spec = app_and_spec
    doc = render.DOC.read_text()
    assert render.splice(doc, render.render(spec)) == doc, \
        "docs/api.md is stale: run `python -m hub.openapi.render`"
    assert "`/api/boxes/{id}/exec`" in doc and "- `BoxCreate`:" in doc


def test_parsed_bodies_keep_the_want_messages() -> None:
    def message(body: dict[str, Any], model: Any) -> str:
        with pytest.raises(RemoteError) as caught:
            fields_of(body, model)
        return caught.value.message

    assert message({"image": "x"}, cluster.BoxCreate) == "missing field 'spoke'"
    assert message({"spoke": "a", "image": "x", "network": 1}, cluster.BoxCreate) == \
        "field 'network' must be of type bool"
    assert message({"spoke": "a", "image": "x", "cpus": True}, cluster.BoxCreate) == \
        "field 'cpus' must be of type int/float"
    assert message({"spoke": None, "image": "x"}, cluster.BoxCreate) == "missing field 'spoke'"
    assert message({"cmd": "ls"}, cluster.ExecBody) == "field 'cmd' must be of type list"
    assert message({"message": "hi", "on_loss": 3}, workstreams.WsStart) == \
        "field 'on_loss' must be of type str"
    got = fields_of({"spoke": "a", "image": "x", "cpus": 1, "memory": "512m", "network": None,
                     "unknown": 1}, cluster.BoxCreate)
    assert (got.cpus, got.memory, got.network, got.env) == (1, "512m", False, None)
    assert fields_of({"name": "laptop", "ttl": None}, cluster.TokenCreate).ttl == "1h"
    assert fields_of({}, cluster.PingBody).count == 1


def test_the_spec_is_served_without_auth(hub: Hub,
                                         app_and_spec: tuple[Any, dict[str, Any]]) -> None:
    answer = Web(hub).call("GET", "/api/openapi.json")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    served = answer.json()
    _app, spec = app_and_spec
    assert served["paths"] == spec["paths"] and served["components"] == spec["components"]
    assert "servers" not in served  # it describes the hub at the origin it was fetched from
