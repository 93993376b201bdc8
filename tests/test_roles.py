"""Roles for users and API keys, checked for every REST route and MCP tool; the users API and
its CLI; the audit log naming who acted. Real hub processes, except the router walk.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from hub import roles
from hub.app import Hub as HubApp
from hub.app import HubConfig
from tests.cluster import Hub
from tests.test_mcp import call, call_error, mcp_session
from tests.web_client import Web, admin_key, admin_password, bearer, piped


def test_every_route_has_a_role_rule(tmp_path: Path) -> None:
    app = HubApp(HubConfig(data_dir=tmp_path / "hub")).make_app()
    missing, seen = [], 0
    for route in app.router.routes():
        seen += 1
        if roles.rule_for(route.method, route.resource.canonical if route.resource else "") is None:
            missing.append(f"{route.method} {route.resource.canonical if route.resource else '?'}")
    assert seen > 40
    assert not missing, f"routes missing from hub.roles.ROUTE_ROLES: {missing}"
    # Spot checks of the table's intent.
    assert roles.rule_for("GET", "/api/spokes") == roles.VIEWER
    assert roles.rule_for("HEAD", "/") == roles.PUBLIC
    assert roles.rule_for("POST", "/api/boxes/{id}/exec") == roles.OPERATOR
    assert roles.rule_for("POST", "/api/tokens") == roles.ADMIN
    assert roles.rule_for("DELETE", "/api/spokes/{name}") == roles.ADMIN
    assert roles.rule_for("GET", "/static/{path}") == roles.PUBLIC
    assert roles.rule_for("POST", "/static/{path}") is None


def key_with_role(hub: Hub, role: str) -> str:
    made = hub.cli_json("apikey", "create", "--name", f"{role}-key", "--role", role)
    assert made["role"] == role
    return str(made["key"])


def test_requests_without_credentials_get_401(hub: Hub) -> None:
    web = Web(hub)
    sample = [("GET", "/api/spokes"), ("GET", "/api/info"), ("POST", "/api/boxes"),
              ("DELETE", "/api/tokens/tok_0000000000000000"), ("GET", "/api/ws"),
              ("GET", "/api/users"), ("PUT", "/api/boxes/bx_0000000000000000/file?path=a"),
              ("GET", "/api/nothing-here"), ("POST", "/mcp")]
    for method, path in sample:
        for headers in ({}, bearer("shk_not-a-key"), {"Cookie": "spokehub_session=forged"}):
            answer = web.call(method, path, {}, headers=headers)
            assert answer.status == 401, (method, path, headers, answer.body)
            assert answer.json()["error"]["code"] == "denied" and answer.json()["error"]["message"]
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    for open_path in ("/healthz", "/", "/signin"):
        assert web.call("GET", open_path).status == 200, open_path
    # /metrics needs a key (issue 8, item 11); a viewer key scrapes it, as Prometheus does.
    assert web.call("GET", "/metrics").status == 401
    metrics = web.call("GET", "/metrics", headers=bearer(key_with_role(hub, "viewer")))
    assert metrics.status == 200 and b"spokehub_calls_total" in metrics.body


def test_a_viewer_key_reads_but_cannot_write(hub: Hub) -> None:
    viewer = bearer(key_with_role(hub, "viewer"))
    web = Web(hub)
    for path in ("/api/spokes", "/api/boxes", "/api/ws", "/api/info", "/api/models"):
        assert web.call("GET", path, headers=viewer).status == 200, path
    for method, path, needed in [("POST", "/api/boxes", "operator"),
                                 ("POST", "/api/ws", "operator"),
                                 ("POST", "/api/tokens", "admin"),
                                 ("GET", "/api/tokens", "admin"),
                                 ("GET", "/api/apikeys", "admin"),
                                 ("GET", "/api/boxes/bx_0000000000000000/file?path=a", "operator")]:
        answer = web.call(method, path, {"name": "x"}, headers=viewer)
        assert answer.status == 403, (method, path, answer.body)
        assert answer.json()["error"]["code"] == "denied"
        assert f"needs the {needed} role" in answer.message and "has the viewer role" in answer.message
    listed = {k["name"]: k for k in hub.cli_json("apikey", "list")}
    assert listed["viewer-key"]["role"] == "viewer" and listed["local-admin"]["role"] == "admin"


def test_an_operator_runs_things_but_cannot_administer(hub: Hub) -> None:
    operator = bearer(key_with_role(hub, "operator"))
    web = Web(hub)
    for method, path in [("POST", "/api/tokens"), ("POST", "/api/apikeys"), ("GET", "/api/users"),
                         ("DELETE", "/api/spokes/laptop"), ("DELETE", "/api/apikeys/key_x")]:
        answer = web.call(method, path, {"name": "x"}, headers=operator)
        assert answer.status == 403 and "needs the admin role" in answer.message, (path, answer.body)
    # Past the role check: the body is judged, as for an admin.
    answer = web.call("POST", "/api/boxes", {"image": "x"}, headers=operator)
    assert answer.status == 400 and "missing field 'spoke'" in answer.message
    answer = web.call("POST", "/api/boxes", {"spoke": "nowhere", "image": "x"}, headers=operator)
    assert answer.status == 404


def test_admin_user_add_list_remove(hub: Hub) -> None:
    added = hub.cli("admin", "user", "add", "alice", "--role", "viewer", check=True)
    password = added.stdout.strip().splitlines()[-1]
    assert "password (shown once)" in added.stderr and len(password) >= 16
    rows = {u["name"]: u for u in hub.cli_json("admin", "user", "ls")}
    assert rows["alice"]["role"] == "viewer" and rows["admin"]["role"] == "admin"
    assert all("password_hash" not in u for u in rows.values())
    alice = Web(hub)
    assert alice.sign_in("alice", password).json()["role"] == "viewer"
    assert alice.call("GET", "/api/spokes").status == 200
    refused = alice.call("POST", "/api/boxes", {"spoke": "a", "image": "b"})
    assert refused.status == 403 and "needs the operator role; user alice has the viewer role" in refused.message
    other = alice.call("PUT", "/api/users/admin/password", {"password": "x" * 20})
    assert other.status == 403 and "admin role" in other.message
    own = alice.call("PUT", "/api/users/alice/password",
                     {"password": "alice's new password", "current_password": "wrong"})
    assert own.status == 403 and "current password" in own.message
    own = alice.call("PUT", "/api/users/alice/password",
                     {"password": "alice's new password", "current_password": password})
    assert own.status == 200 and alice.call("GET", "/api/session").status == 200

    bob = piped(hub, "bob's piped password\n", "admin", "user", "add", "bob", "--role",
                "operator", "--password-stdin", "--json")
    assert bob.returncode == 0 and "password" not in json.loads(bob.stdout), bob.stderr
    assert Web(hub).sign_in("bob", "bob's piped password").json()["role"] == "operator"
    for args, needle in [(("alice", "--role", "viewer"), "exists"),
                         (("Bad Name", "--role", "viewer"), "bad user name"),
                         (("carol", "--role", "root"), "invalid value")]:
        res = hub.cli("admin", "user", "add", *args)
        assert res.returncode == 2 and needle in res.stderr.lower(), (args, res.stderr)

    hub.cli("admin", "user", "rm", "alice", check=True)
    assert alice.call("GET", "/api/session").status == 401, "a removed user's sessions end"
    assert "alice" not in {u["name"] for u in hub.cli_json("admin", "user", "list")}
    again = hub.cli("admin", "user", "remove", "alice")
    assert again.returncode == 2 and "no user 'alice'" in again.stderr
    last = hub.cli("admin", "user", "remove", "admin")
    assert last.returncode == 2 and "only admin" in last.stderr


def test_bad_bodies_and_unknown_ids(hub: Hub) -> None:
    web, key = Web(hub), bearer(admin_key(hub))
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/api/apikeys", {"name": "k", "role": "root"}, 400, "role must be one of"),
        ("POST", "/api/users", {"name": "dave"}, 400, "missing field 'role'"),
        ("POST", "/api/users", {"name": "dave", "role": "viewer", "password": "short"}, 400,
         "too short"),
        ("POST", "/api/users", {"name": "dave", "role": "viewer", "password": "é" * 40}, 400,
         "too long"),
        ("POST", "/api/users", {"name": 7, "role": "viewer"}, 400, "must be of type str"),
        ("PUT", "/api/users/admin/password", {}, 400, "missing field 'password'"),
        ("DELETE", "/api/users/nobody", None, 404, "no user 'nobody'"),
        ("PUT", "/api/users/nobody/password", {"password": "long enough, surely"}, 404, "no user"),
        ("DELETE", "/api/tokens/tok_0000000000000000", None, 404, "no token"),
        ("DELETE", "/api/apikeys/key_0000000000000000", None, 404, "no active API key"),
    ]
    for method, path, body, status, fragment in cases:
        answer = web.call(method, path, body, headers=key)
        assert answer.status == status and fragment in answer.message, (path, body, answer.body)
    # Oversized and pathological bodies on authenticated routes: refused with a message, as
    # a bearer client and as a signed-in browser; nothing recorded.
    big = json.dumps({"message": "x" * (2 * 1024 * 1024)}).encode()
    signed = Web(hub)
    signed.sign_in("admin", admin_password(hub))
    for who, headers in ((web, key), (signed, {})):
        answer = who.call("POST", "/api/ws", raw=big, headers=headers)
        assert answer.status == 413 and "body larger than 1048576 bytes" in answer.message
        deep = who.call("POST", "/api/tokens", raw=b"[" * 100_000 + b"]" * 100_000, headers=headers)
        assert deep.status == 400 and deep.message == "body is nested too deeply", deep.body
        assert who.call("POST", "/api/tokens", raw=b"{nope", headers=headers).message == \
            "body is not valid JSON"
    assert hub.client().request("GET", "/api/ws") == []
    assert hub.proc is not None and "Traceback" not in hub.proc.output()
    made = web.call("POST", "/api/users", {"name": "dave", "role": "operator",
                                           "password": "dave's own password"}, headers=key)
    assert made.status == 201 and made.json() == {
        "name": "dave", "role": "operator", "created_at": made.json()["created_at"]}
    assert Web(hub).sign_in("dave", "dave's own password").json()["role"] == "operator"


def test_audit_rows_name_the_actor(hub: Hub) -> None:
    key_id = {k["name"]: k["id"] for k in hub.cli_json("apikey", "list")}["local-admin"]
    hub.cli("token", "create", "--name", "laptop", check=True)
    web = Web(hub)
    web.sign_in("admin", admin_password(hub))
    assert web.call("POST", "/api/apikeys", {"name": "from-web", "role": "viewer"}).status == 201
    assert web.call("POST", "/api/users", {"name": "erin", "role": "viewer"}).status == 201
    web.call("DELETE", "/api/session")
    Web(hub).sign_in("erin", "not her password")
    with sqlite3.connect(hub.dir / "hub.db") as db:
        rows = [(k, s, a) for k, s, a in db.execute("SELECT kind, subject, actor FROM audit")]
    assert ("token.created", "laptop", f"key:{key_id}") in rows
    assert ("session.created", "admin", "user:admin") in rows
    assert ("apikey.created", "from-web", "user:admin") in rows
    assert ("user.added", "erin", "user:admin") in rows
    assert ("session.ended", "admin", "user:admin") in rows
    assert ("session.refused", "erin", "") in rows, "a failed sign-in acted as nobody"


async def test_mcp_tools_check_the_role(hub: Hub) -> None:
    viewer, operator = key_with_role(hub, "viewer"), key_with_role(hub, "operator")
    async with mcp_session(hub, key=viewer) as s:
        assert (await call(s, "list_spokes"))["spokes"] == []
        assert (await call(s, "list_jobs"))["jobs"] == []
        text = await call_error(s, "create_box", spoke="anywhere")
        assert text.endswith("denied: create_box needs the operator role (you are a viewer)")
        text = await call_error(s, "exec", box="bx_0000000000000000", cmd="true")
        assert "denied: exec needs the operator role" in text
        text = await call_error(s, "read_file", box="bx_0000000000000000", path="a")
        assert "denied: read_file needs the operator role" in text
    async with mcp_session(hub, key=operator) as s:
        text = await call_error(s, "create_box", spoke="anywhere")
        assert "not_found" in text and "denied" not in text, text  # past the role check
    doc = json.loads((hub.dir / "admin.json").read_text())
    async with mcp_session(hub, key=doc["api_key"]) as s:
        assert "not_found" in await call_error(s, "create_box", spoke="anywhere")


def test_a_revoked_key_is_refused_at_once(hub: Hub) -> None:
    """Issue 8, item 11: a revoked key used to work for up to 2 s more (the key cache)."""
    made = hub.cli_json("apikey", "create", "--name", "short-lived", "--role", "viewer")
    web = Web(hub)
    for _ in range(3):  # cached now
        assert web.call("GET", "/api/spokes", headers=bearer(made["key"])).status == 200
    hub.cli("apikey", "revoke", made["id"], check=True)
    answer = web.call("GET", "/api/spokes", headers=bearer(made["key"]))
    assert answer.status == 401 and answer.message == "invalid or revoked API key"


def test_wrong_keys_are_logged_once_a_minute_per_address(hub: Hub) -> None:
    """Issue 8, item 11: 3000 wrong-key requests logged nothing; now one warning line with
    the source address and the count, not one per request."""
    import http.client
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", hub.port, context=ctx, timeout=30)
    for i in range(500):  # one kept-alive connection: a brute force, not a connection flood
        conn.request("GET", "/api/spokes", headers={"Authorization": f"Bearer shk_guess{i}"})
        response = conn.getresponse()
        response.read()
        assert response.status == 401
    conn.close()
    assert hub.proc is not None
    lines = [line for line in hub.proc.output().splitlines()
             if "requests with an invalid or revoked API key" in line]
    assert len(lines) == 1 and "1 requests with an invalid or revoked API key from 127.0.0.1" in lines[0]


def test_the_failure_log_counts_between_lines() -> None:
    from hub.http_util import FailureLog

    now = [0.0]
    failures = FailureLog("bad things", every_s=60, clock=lambda: now[0])
    assert failures.note("10.0.0.1") is True  # the first is said at once
    assert not any(failures.note("10.0.0.1") for _ in range(41))
    assert failures.note("10.0.0.2") is True, "per address"
    now[0] = 61
    assert failures.note("10.0.0.1") is True  # "42 bad things from 10.0.0.1 in the last 61 s"
    assert failures._seen["10.0.0.1"] == (61, 0)


def test_names_with_control_characters_are_refused_and_never_printed_raw(
        hub: Hub, capsys: Any) -> None:
    """Issue 8, item 11: a terminal escape in a key or spoke name was printed raw by the CLI."""
    from cli.common import table

    web, key = Web(hub), bearer(admin_key(hub))
    answer = web.call("POST", "/api/apikeys", {"name": "evil\x1b[2J\x1b[31m", "role": "viewer"},
                      headers=key)
    assert answer.status == 400 and answer.message == "name must not contain control characters"
    assert all("\x1b" not in k["name"] for k in hub.cli_json("apikey", "list"))
    # Whatever a peer managed to put in a field (a spoke's close reason, say) is escaped.
    table([{"name": "ok", "disconnect_reason": "bye\x1b]0;owned\x07\r\n"}], ["name", "disconnect_reason"])
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown
    assert "bye\\x1b]0;owned\\x07\\r\\n" in shown
