"""The audit log: every verb a caller asks that changes or runs something, and every admin
action, with who acted (user or key), which spoke, what, the result and when — through REST
(key and signed-in user), MCP and the CLI; read back with ``hub audit`` and ``GET /api/audit``.
Real hub and spoke processes, real Docker.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from client.http_client import ApiError, HubClient
from tests.cluster import Hub, Spoke
from tests.test_mcp import call, mcp_session
from tests.web_client import Web, admin_password

IMAGE = "spokehub-sandbox:bookworm"


def _audit(hub: Hub, *args: str) -> list[dict[str, Any]]:
    return list(hub.cli_json("audit", "--limit", "200", *args)["audit"])


def _row(rows: list[dict[str, Any]], kind: str, **want: Any) -> dict[str, Any]:
    found = [r for r in rows if r["kind"] == kind and all(r[k] == v for k, v in want.items())]
    assert found, f"no {kind} row with {want} in {json.dumps(rows, indent=1)}"
    return found[0]


async def test_verbs_are_audited_with_actor_spoke_and_result(hub: Hub, spoke: Spoke) -> None:
    made = hub.cli_json("apikey", "create", "--name", "ops", "--role", "operator")
    key_actor = f"key:{made['id']}"
    ops = HubClient(hub.url, made["key"], pin=hub.client().pin)

    box = ops.request("POST", "/api/boxes", {"spoke": spoke.name, "image": IMAGE})["id"]
    *_, done = ops.exec_stream(box, ["sh", "-c", "exit 3"])
    assert done == {"t": "exit", **done} and done["exit_code"] == 3
    ops.put_file(box, "notes.txt", io.BytesIO(b"hello"), 5)
    assert b"".join(ops.get_file(box, "notes.txt")) == b"hello"
    with pytest.raises(ApiError) as missing:
        b"".join(ops.get_file(box, "no-such-file"))
    assert missing.value.status == 404

    web = Web(hub)
    web.sign_in("admin", admin_password(hub))
    ran = web.call("POST", f"/api/boxes/{box}/exec", {"cmd": ["true"]})
    assert ran.status == 200 and b'"exit_code": 0' in ran.body

    async with mcp_session(hub, key=made["key"]) as session:
        out = await call(session, "exec", box=box, cmd="echo from-mcp")
        assert out["stdout"] == "from-mcp\n"

    ops.request("DELETE", f"/api/boxes/{box}")

    rows = _audit(hub, "--spoke", spoke.name, "--kind", "box.*")
    created = _row(rows, "box.create", subject=box)
    assert (created["actor"], created["spoke"], created["result"]) == (key_actor, spoke.name, "ok")
    assert created["detail"] == IMAGE and created["ts"] > 0
    assert _row(rows, "box.exec", detail="sh -c 'exit 3'")["result"] == "exit 3"
    assert _row(rows, "box.exec", detail="sh -c 'exit 3'")["actor"] == key_actor
    assert _row(rows, "box.exec", detail="true")["actor"] == "user:admin"
    mcp_row = _row(rows, "box.exec", detail="/bin/sh -c 'echo from-mcp'")
    assert (mcp_row["actor"], mcp_row["result"]) == (key_actor, "exit 0")
    put = _row(rows, "box.put_file", subject=box)
    assert put["detail"] == "/workspace/notes.txt (5 bytes)" and put["actor"] == key_actor
    assert _row(rows, "box.get_file", detail="notes.txt")["result"] == "ok: 5 bytes"
    assert _row(rows, "box.get_file", detail="no-such-file")["result"].startswith("not_found: ")
    assert _row(rows, "box.destroy", subject=box)["actor"] == key_actor
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True), "newest first"
    assert {r["spoke"] for r in rows} == {spoke.name}

    # Filters: by actor, by exact kind; paging back with next_before.
    mine = _audit(hub, "--actor", "user:admin")
    assert mine and {r["actor"] for r in mine} == {"user:admin"}
    assert {r["kind"] for r in _audit(hub, "--kind", "box.exec")} == {"box.exec"}
    admin = hub.client()
    first = admin.request("GET", "/api/audit?limit=2")
    assert len(first["audit"]) == 2 and first["next_before"] == first["audit"][-1]["id"]
    older = admin.request("GET", f"/api/audit?limit=2&before={first['next_before']}")
    assert older["audit"][0]["id"] < first["audit"][-1]["id"]

    # The human table names its columns; bad arguments are usage errors, not traces.
    table = hub.cli("audit", "--kind", "box.destroy", check=True).stdout
    assert table.split()[:7] == ["TS", "ACTOR", "KIND", "SPOKE", "SUBJECT", "DETAIL", "RESULT"]
    assert box in table and key_actor in table
    bad = hub.cli("audit", "--limit", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    for query in ("limit=0", "before=x", "kind=", "spoke=%1b[31m"):
        with pytest.raises(ApiError) as refused:
            admin.request("GET", f"/api/audit?{query}")
        assert refused.value.status == 400, query


def test_a_viewer_reads_the_audit_log_and_cannot_act(hub: Hub) -> None:
    made = hub.cli_json("apikey", "create", "--name", "eyes", "--role", "viewer")
    viewer = HubClient(hub.url, made["key"], pin=hub.client().pin)
    rows = viewer.request("GET", "/api/audit")["audit"]
    assert _row(rows, "apikey.created", subject="eyes")["result"] == "ok"
    with pytest.raises(ApiError) as refused:
        viewer.request("POST", "/api/tokens", {"name": "nope"})
    assert refused.value.status == 403
