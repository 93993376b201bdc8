"""The MCP front-end with the real `mcp` client against a real hub, a real spoke and Docker.

Sessions go over streamable HTTP with TLS pinned to the hub's self-signed certificate (the
same code the stdio bridge uses); the stdio bridge itself is spawned as `hub mcp-stdio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from cli.mcp_command import pinned_context
from tests.cluster import Hub, Spoke
from tests.llm_server import Call, Echo
from tests.ws_helpers import ThreadedLLM

IMAGE = "spokehub-sandbox:bookworm"
CLUSTER_TOOLS = {
    "list_spokes", "list_boxes", "create_box", "destroy_box", "box_logs", "write_file",
    "read_file", "exec", "start_exec", "read_output", "job_status", "list_jobs", "cancel_job",
}


def admin(hub: Hub) -> dict[str, Any]:
    return dict(json.loads((hub.dir / "admin.json").read_text()))


def new_key(hub: Hub, name: str) -> str:
    return str(hub.client().request("POST", "/api/apikeys", {"name": name})["key"])


@contextlib.asynccontextmanager
async def mcp_session(hub: Hub, key: str | None = None, mode: str = "legacy") -> AsyncIterator[Any]:
    """A connected MCP client: ``legacy`` = ClientSession + initialize handshake (sessions),
    ``modern`` = the SDK's Client negotiating the stateless 2026 revision."""
    doc = admin(hub)
    ctx = await pinned_context("127.0.0.1", hub.port, doc["pin"])
    headers = {"Authorization": f"Bearer {key or doc['api_key']}"}
    async with httpx2.AsyncClient(verify=ctx, headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        transport = streamable_http_client(f"{hub.url}/mcp", http_client=http)
        if mode == "modern":
            async with Client(transport, mode="auto") as client:
                assert client.protocol_version == "2026-07-28"
                yield client
            return
        async with transport as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: Any, tool: str, **args: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, args)
    assert not result.is_error, f"{tool} failed: {result.content}"
    return dict(result.structured_content or {})


async def call_error(session: Any, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, f"{tool} should have failed: {result.structured_content}"
    return str(result.content[0].text)


async def processes(session: Any, box: str) -> str:
    out = await call(session, "exec", box=box, cmd="cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    return str(out["stdout"])


async def read_until(session: Any, job: str, cursor: int, want: str) -> tuple[str, int, dict[str, Any]]:
    """read_output from ``cursor`` (long-polling, several steps if need be) until ``want``
    has appeared; returns the text read, the new cursor and the last reply."""
    text = ""
    for _ in range(200):
        out = await call(session, "read_output", job=job, cursor=cursor, wait_s=5)
        assert out["cursor"] >= cursor
        text, cursor = text + out["stdout"], out["cursor"]
        if want in text or out["done"]:
            return text, cursor, out
    raise AssertionError(f"{want!r} never appeared in job {job}: {text!r}")


@pytest.mark.parametrize("mode", ["legacy", "modern"])
async def test_box_round_trip(hub: Hub, spoke: Spoke, mode: str) -> None:
    async with mcp_session(hub, mode=mode) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert CLUSTER_TOOLS <= names
        [row] = (await call(s, "list_spokes"))["spokes"]
        assert row["name"] == spoke.name and row["connected"] is True
        box = (await call(s, "create_box", spoke=spoke.name, image=IMAGE))["id"]
        assert [b["id"] for b in (await call(s, "list_boxes"))["boxes"]] == [box]
        text = "hello from MCP\nsecond line ✓\n"
        assert (await call(s, "write_file", box=box, path="/workspace/a.txt", content=text))["size"] == len(text.encode())
        out = await call(s, "exec", box=box, cmd=["cat", "/workspace/a.txt"])
        assert (out["exit_code"], out["stdout"], out["stderr"]) == (0, text, "")
        failed = await call(s, "exec", box=box, cmd="echo oops >&2; exit 7")
        assert (failed["exit_code"], failed["stderr"]) == (7, "oops\n")
        back = await call(s, "read_file", box=box, path="/workspace/a.txt")
        assert back["content"] == text
        blob = await call(s, "read_file", box=box, path="/workspace/a.txt", encoding="base64")
        assert blob["encoding"] == "base64" and blob["size"] == len(text.encode())
        assert "no such file" in await call_error(s, "read_file", box=box, path="/workspace/missing")
        assert "not a box id" in await call_error(s, "exec", box="nope", cmd="true")
        await call(s, "box_logs", box=box)
        assert (await call(s, "destroy_box", box=box))["state"] == "destroyed"
        assert (await call(s, "list_boxes"))["boxes"] == []
        assert "not_found" in await call_error(s, "exec", box=box, cmd="true")
        assert "not_found" in await call_error(s, "start_exec", box=box, cmd="true")


async def test_exec_reports_progress_and_read_file_cap(hub: Hub, spoke: Spoke) -> None:
    async with mcp_session(hub) as s:
        box = (await call(s, "create_box", spoke=spoke.name))["id"]
        seen = asyncio.Event()
        messages: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            messages.append(message)
            seen.set()

        # The command waits for a gate file: only a progress notification sent while it runs
        # (then the gate, written by a second call on the same session) lets it finish.
        script = "echo first; while [ ! -e /workspace/gate ]; do sleep 0.05; done; echo second"
        running = asyncio.ensure_future(
            s.call_tool("exec", {"box": box, "cmd": script}, progress_callback=on_progress)
        )
        await asyncio.wait_for(seen.wait(), 60)
        await call(s, "write_file", box=box, path="/workspace/gate", content="")
        result = await asyncio.wait_for(running, 60)
        assert not result.is_error and result.structured_content["stdout"] == "first\nsecond\n"
        assert messages and "bytes of output" in str(messages[0])

        await call(s, "exec", box=box, cmd="head -c 1100000 /dev/zero > /workspace/big")
        error = await call_error(s, "read_file", box=box, path="/workspace/big")
        assert "1100000 bytes" in error and "at most 1048576 bytes" in error
        small = await call_error(s, "read_file", box=box, path="/workspace/big", max_bytes=1000)
        assert "at most 1000 bytes" in small
        timed = await call(s, "exec", box=box, cmd="sleep 30", timeout_s=1)
        assert timed["timed_out"] is True


async def test_long_job_in_cursor_steps_then_cancelled(hub: Hub, spoke: Spoke) -> None:
    async with mcp_session(hub) as s:
        box = (await call(s, "create_box", spoke=spoke.name))["id"]
        script = ("echo ready; while [ ! -e /workspace/go ]; do sleep 0.05; done; n=0; "
                  "while :; do n=$((n+1)); echo line-$n; sleep 0.2; done  # mcp-long-job")
        job = (await call(s, "start_exec", box=box, cmd=script))["job"]
        assert (await call(s, "job_status", job=job))["state"] == "running"
        text, cursor, out = await read_until(s, job, 0, "ready\n")
        assert text == "ready\n" and not out["done"]
        # Nothing new while the job waits for its gate: a bounded wait returns the same cursor.
        idle = await call(s, "read_output", job=job, cursor=cursor, wait_s=0.3)
        assert (idle["stdout"], idle["cursor"], idle["done"]) == ("", cursor, False)
        await call(s, "write_file", box=box, path="/workspace/go", content="")
        lines: list[str] = []
        cursors = [cursor]
        for step in range(3):  # several reads, each continuing where the last one stopped
            text, cursor, out = await read_until(s, job, cursor, f"line-{len(lines) + 1}\n")
            lines += text.splitlines()
            cursors.append(cursor)
            assert out["state"] == "running", step
        assert cursors == sorted(set(cursors))
        assert lines == [f"line-{i}" for i in range(1, len(lines) + 1)]  # no gap, no repeat
        assert "mcp-long-job" in await processes(s, box)

        cancelled = await call(s, "cancel_job", job=job)
        assert cancelled["state"] == "cancelled"
        for _ in range(100):
            if "mcp-long-job" not in await processes(s, box):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the cancelled job's process is still running in the box")
        text, cursor, out = await read_until(s, job, cursor, "never printed")
        assert out["done"] and out["state"] == "cancelled"
        assert (await call(s, "cancel_job", job=job))["state"] == "cancelled"  # idempotent
        assert [j["job"] for j in (await call(s, "list_jobs"))["jobs"]] == [job]


async def test_unauthenticated_requests_get_401(hub: Hub) -> None:
    doc = admin(hub)
    ctx = await pinned_context("127.0.0.1", hub.port, doc["pin"])
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(verify=ctx) as http:
        for auth in ({}, {"Authorization": "Bearer shk_not-a-key"}, {"Authorization": "Basic eDp5"}):
            resp = await http.post(f"{hub.url}/mcp", json=body, headers={**headers, **auth})
            assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
        good = {**headers, "Authorization": f"Bearer {doc['api_key']}"}
        rebinding = await http.post(f"{hub.url}/mcp", json=body, headers={**good, "Host": "evil.example"})
        assert rebinding.status_code == 421
        foreign = await http.post(f"{hub.url}/mcp", json=body, headers={**good, "Origin": "https://evil.example"})
        assert foreign.status_code == 403
    with pytest.raises(BaseException):  # noqa: B017 - the SDK raises whatever its stack raises
        async with mcp_session(hub, key="shk_wrong") as s:
            await s.list_tools()


async def test_jobs_survive_a_hub_restart_and_are_scoped_to_the_key(hub: Hub, spoke: Spoke) -> None:
    gated = "echo before-{0}; while [ ! -e /workspace/{0} ]; do sleep 0.05; done; echo after-{0}"
    async with mcp_session(hub) as s:
        box = (await call(s, "create_box", spoke=spoke.name))["id"]
        graceful = (await call(s, "start_exec", box=box, cmd=gated.format("a")))["job"]
        await read_until(s, graceful, 0, "before-a")
    hub.stop()  # SIGTERM: the hub ends the job itself and records it
    hub.start()
    spoke.wait_connected()
    async with mcp_session(hub) as s:
        status = await call(s, "job_status", job=graceful)
        assert (status["state"], status["error"], status["box"]) == ("interrupted", "the hub stopped", box)
        out = await call(s, "read_output", job=graceful, cursor=0)
        assert (out["stdout"], out["done"]) == ("before-a\n", True)
        crashed = (await call(s, "start_exec", box=box, cmd=gated.format("b")))["job"]
        await read_until(s, crashed, 0, "before-b")
    assert hub.proc is not None
    hub.proc.stop(signal.SIGKILL)  # a crash: the row is still "running" in the database
    hub.start()
    spoke.wait_connected()
    other = new_key(hub, "someone-else")
    async with mcp_session(hub, key=other) as s:
        for job in (graceful, crashed):
            assert "not_found" in await call_error(s, "job_status", job=job)
            assert "not_found" in await call_error(s, "read_output", job=job)
            assert "not_found" in await call_error(s, "cancel_job", job=job)
        assert (await call(s, "list_jobs"))["jobs"] == []
    async with mcp_session(hub) as s:
        out = await call(s, "read_output", job=crashed, cursor=0)
        assert (out["state"], out["stdout"], out["done"]) == ("interrupted", "before-b\n", True)
        assert "restarted" in (await call(s, "job_status", job=crashed))["error"]
        assert {j["job"] for j in (await call(s, "list_jobs"))["jobs"]} == {graceful, crashed}


def _bridge(hub: Hub, *args: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(command="hub", args=["mcp-stdio", *args], env=env)


async def test_stdio_bridge_forwards_tools(hub: Hub, spoke: Spoke, tmp_path: Path) -> None:
    doc = admin(hub)
    env = {"SPOKEHUB_URL": hub.url, "SPOKEHUB_API_KEY": doc["api_key"], "SPOKEHUB_PIN": doc["pin"]}
    with (tmp_path / "bridge.err").open("w") as errlog:
        async with stdio_client(_bridge(hub, env=env), errlog=errlog) as (read, write):
            async with ClientSession(read, write) as s:
                init = await s.initialize()
                assert init.server_info.name == "spokehub" and "start_exec" in (init.instructions or "")
                assert CLUSTER_TOOLS <= {t.name for t in (await s.list_tools()).tools}
                box = (await call(s, "create_box", spoke=spoke.name))["id"]
                out = await call(s, "exec", box=box, cmd="echo via-stdio; exit 3")
                assert (out["exit_code"], out["stdout"]) == (3, "via-stdio\n")
                assert "not_found" in await call_error(s, "job_status", job="job_0000000000000000")
                assert (await call(s, "destroy_box", box=box))["state"] == "destroyed"


async def test_stdio_bridge_refuses_a_wrong_pin(hub: Hub, tmp_path: Path) -> None:
    err_path = tmp_path / "bridge.err"
    wrong = "sha256:" + "0" * 64
    with err_path.open("w") as errlog, pytest.raises(BaseException):  # noqa: B017
        async with stdio_client(_bridge(hub, "--data-dir", str(hub.dir), "--pin", wrong),
                                errlog=errlog) as (read, write):
            async with ClientSession(read, write) as s:
                await asyncio.wait_for(s.initialize(), 60)
    assert "does not match the pin" in err_path.read_text()


@pytest.mark.parametrize("mode", ["legacy", "modern"])
async def test_a_cancelled_exec_call_kills_its_process(hub: Hub, spoke: Spoke, mode: str) -> None:
    """A client that gives up on exec (a cancel notification, or on the stateless revision
    a closed response stream) must not leave the command running in the box."""
    async with mcp_session(hub, mode=mode) as s:
        box = (await call(s, "create_box", spoke=spoke.name))["id"]
        started = asyncio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            started.set()

        script = "echo up; while [ ! -e /workspace/never ]; do sleep 0.05; done  # mcp-abandoned"
        running = asyncio.ensure_future(
            s.call_tool("exec", {"box": box, "cmd": script, "timeout_s": 600}, progress_callback=on_progress)
        )
        await asyncio.wait_for(started.wait(), 60)
        assert "mcp-abandoned" in await processes(s, box)
        running.cancel()
        with contextlib.suppress(BaseException):
            await running
        for _ in range(100):
            if "mcp-abandoned" not in await processes(s, box):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the abandoned exec is still running in the box")


async def _wait_ws(session: Any, ws_id: str, cursor: int, states: tuple[str, ...],
                   events: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """get_workstream in cursor steps (long-polling) until the workstream is in ``states``;
    every event read is appended to ``events`` exactly once."""
    for _ in range(200):
        out = await call(session, "get_workstream", workstream=ws_id, cursor=cursor, wait_s=5)
        assert out["cursor"] >= cursor
        events += out["events"]
        cursor = out["cursor"]
        if out["workstream"]["state"] in states and not out["more"]:
            return out["workstream"], cursor
    raise AssertionError(f"{ws_id} never reached {states}: {[e['kind'] for e in events]}")


async def test_workstream_with_an_approval_round_trip(model_hub: Hub, model_spoke: Spoke,
                                                      llm: ThreadedLLM) -> None:
    marker = llm.script("mcp-approve", [Call("bash", {"command": "echo from-mcp-agent"}),
                                        Echo("the command printed {last_tool_result}"),
                                        Call("bash", {"command": "echo second"})])
    async with mcp_session(model_hub) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"start_workstream", "send_message", "get_workstream", "approve_call", "deny_call",
                "cancel_workstream"} <= names
        ws = await call(s, "start_workstream", message=f"{marker} run it", spoke=model_spoke.name)
        events: list[dict[str, Any]] = []
        row, cursor = await _wait_ws(s, ws["id"], 0, ("attention",), events)
        [pending] = row["pending_approvals"]
        assert pending["tool"] == "bash"
        decided = await call(s, "approve_call", workstream=ws["id"], call_id=pending["call_id"])
        assert decided["state"] == "approved"
        assert "already" in await call_error(s, "approve_call", workstream=ws["id"], call_id=pending["call_id"])
        row, cursor = await _wait_ws(s, ws["id"], cursor, ("idle",), events)
        seen = [e["kind"] for e in events]
        assert {"approval_requested", "approval_decided", "tool_result", "assistant_message"} <= set(seen)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "no gaps, no repeats"
        answer = [e for e in events if e["kind"] == "assistant_message"][-1]["data"]["text"]
        assert "from-mcp-agent" in answer
        # A follow-up, then a cancel while the next tool call waits for approval.
        await call(s, "send_message", workstream=ws["id"], message="and again")
        row, cursor = await _wait_ws(s, ws["id"], cursor, ("attention",), events)
        assert len(row["pending_approvals"]) == 1
        cancelled = await call(s, "cancel_workstream", workstream=ws["id"])
        assert cancelled["pending_approvals"] == []
        row, cursor = await _wait_ws(s, ws["id"], cursor, ("idle",), events)
        assert "approval_resolved_by_hub" in [e["kind"] for e in events]
        assert "not_found" in await call_error(s, "get_workstream", workstream="ws_0000000000000000")
