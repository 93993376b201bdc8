"""Agent workstreams end to end: a real hub holding the model keys, real spokes running the
agent loop through the hub's relay with the official SDKs, tools in real Docker boxes, and the
scripted LLM as the only stand-in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker

from tests.cluster import Hub, Spoke, wait_until
from tests.llm_server import Call, Echo, Fail, Hang, Malformed, Say
from tests.ws_helpers import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    ThreadedLLM,
    kinds,
    start_ws,
    wait_state,
    ws_events,
    ws_row,
)


def _box_exec(hub: Hub, box_id: str, *cmd: str) -> str:
    res = hub.cli("box", "exec", box_id, "--", *cmd)
    assert res.returncode == 0, f"box exec {cmd} failed ({res.returncode}): {res.stderr}"
    return res.stdout


def test_multi_step_task_writes_runs_and_reports(model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("multistep", [
        Call("write_file", {"path": "calc.py", "content": "print(6 * 7)\n"}),
        Call("bash", {"command": "python3 calc.py"}),
        Echo("the program printed: {last_tool_result}"),
    ])
    res = model_hub.cli("ws", "new", "--auto-approve", "--json", f"{marker} write and run calc.py")
    result = json.loads(res.stdout)
    assert res.returncode == 0, [e for e in result["transcript"] if e["kind"] == "error"]
    assert result["state"] == "idle"
    assert "42" in result["answer"]
    row = ws_row(model_hub, result["id"])
    assert row["spoke"] == model_spoke.name and row["box_id"].startswith("bx_")
    # The file really is in the workstream's own box on the spoke.
    assert _box_exec(model_hub, row["box_id"], "cat", "/workspace/calc.py") == "print(6 * 7)\n"
    seen = kinds(result["transcript"])
    assert seen.count("tool_call") == 2 and seen.count("tool_result") == 2
    assert "assistant_message" in seen
    # Keys never leave the hub: the model endpoint saw the hub's key, the spoke never held it.
    auths = {r.auth for r in llm.requests()}
    assert auths == {f"Bearer {OPENAI_KEY}"}
    spoke_files = "".join(p.read_text(errors="replace") for p in model_spoke.dir.rglob("*") if p.is_file())
    assert OPENAI_KEY not in spoke_files and OPENAI_KEY not in model_spoke.proc.output()  # type: ignore[union-attr]
    # Usage is recorded per workstream and per spoke.
    usage = model_hub.client().request("GET", "/api/usage")
    mine = [u for u in usage if u["spoke"] == model_spoke.name]
    assert mine and mine[0]["input_tokens"] > 0 and mine[0]["output_tokens"] > 0
    # Closing the workstream removes its box.
    model_hub.cli("ws", "close", result["id"], check=True)
    wait_until(lambda: not docker.from_env().containers.list(
        all=True, filters={"label": f"spokehub.box={row['box_id']}"}), what="the box to be removed")


def test_approval_ask_then_approve_and_ask_then_deny(model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("approve", [Call("bash", {"command": "echo approved-run > /workspace/ran; cat /workspace/ran"}),
                                    Echo("result: {last_tool_result}")])
    ws_id = start_ws(model_hub, f"{marker} run it")
    row = wait_state(model_hub, ws_id, "attention")
    (pending,) = row["pending_approvals"]
    assert pending["tool"] == "bash"
    model_hub.cli("ws", "approve", ws_id, pending["call_id"], check=True)
    wait_state(model_hub, ws_id, "idle")
    events = ws_events(model_hub, ws_id)
    assert "approval_decided" in kinds(events)
    answer = [e for e in events if e["kind"] == "assistant_message"][-1]["data"]["text"]
    assert "approved-run" in answer
    again = model_hub.cli("ws", "approve", ws_id, pending["call_id"])
    assert again.returncode != 0 and "already" in again.stderr

    marker = llm.script("deny", [Call("write_file", {"path": "secret.txt", "content": "nope"}),
                                 Echo("the tool said: {last_tool_result}")])
    ws2 = start_ws(model_hub, f"{marker} write it")
    row2 = wait_state(model_hub, ws2, "attention")
    call_id = row2["pending_approvals"][0]["call_id"]
    model_hub.cli("ws", "deny", "--reason", "not today", ws2, call_id, check=True)
    wait_state(model_hub, ws2, "idle")
    events2 = ws_events(model_hub, ws2)
    result = next(e for e in events2 if e["kind"] == "tool_result")
    assert result["data"]["is_error"] and "not today" in result["data"]["output"]
    assert "not today" in [e for e in events2 if e["kind"] == "assistant_message"][-1]["data"]["text"]
    box = ws_row(model_hub, ws2)["box_id"]
    missing = model_hub.cli("box", "exec", box, "--", "test", "-e", "/workspace/secret.txt")
    assert missing.returncode == 1, "a denied write_file must not have written anything"

    # Who started, approved and denied, in the audit log (the CLI acts with the admin key).
    admin_key = {k["name"]: k["id"] for k in model_hub.cli_json("apikey", "list")}["local-admin"]
    audit = model_hub.cli_json("audit", "--actor", f"key:{admin_key}")["audit"]
    seen = {(r["kind"], r["subject"], r["spoke"]) for r in audit}
    assert ("ws.start", ws_id, "") in seen and ("ws.start", ws2, "") in seen
    assert ("approval.decided", ws_id, model_spoke.name) in seen
    denied = next(r for r in audit if r["kind"] == "approval.decided" and r["subject"] == ws2)
    assert denied["detail"] == f"{call_id} denied: not today"


def test_cancel_mid_tool_call_kills_the_process(model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("cancel", [Call("bash", {"command": "sleep 600 & echo $! > /workspace/pid; wait"}),
                                   Say("should never be asked")])
    ws_id = start_ws(model_hub, f"{marker} sleep", auto_approve=True)
    wait_state(model_hub, ws_id, "running")
    box = ws_row(model_hub, ws_id)["box_id"]
    pid = wait_until(lambda: model_hub.cli("box", "exec", box, "--", "cat", "/workspace/pid").stdout.strip(),
                     what="the tool's process to start")
    assert model_hub.cli("box", "exec", box, "--", "test", "-d", f"/proc/{pid}").returncode == 0
    res = model_hub.cli("ws", "cancel", "--json", ws_id)
    assert res.returncode == 0, res.stderr
    wait_state(model_hub, ws_id, "idle")
    wait_until(lambda: model_hub.cli("box", "exec", box, "--", "test", "-d", f"/proc/{pid}").returncode == 1,
               what="the cancelled tool's process to be killed")
    events = ws_events(model_hub, ws_id)
    assert "cancelled" in kinds(events)
    assert not [r for r in llm.requests() if "[script:cancel]" in json.dumps(r.body) and
                any(m.get("role") == "tool" for m in r.body["messages"])], "the model must not be asked again"
    # The workstream is usable after a cancel.
    model_hub.client().request("POST", f"/api/ws/{ws_id}/messages", {"message": "are you there?"})
    wait_until(lambda: sum(1 for e in ws_events(model_hub, ws_id) if e["kind"] == "assistant_message") >= 1,
               what="an answer after the cancel")


def test_fallback_when_the_primary_model_fails(model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("fallback", [Fail(503, "primary is down")], model="m-openai")
    llm.script("fallback", [Say("answered by the fallback model")])
    result = model_hub.client().send_and_wait(f"{marker} hello", auto_approve=True)
    assert result["state"] == "idle" and result["answer"] == "answered by the fallback model"
    hits = [r for r in llm.requests() if "[script:fallback]" in json.dumps(r.body)]
    assert [r.model for r in hits][:1] == ["m-openai"] and hits[-1].model == "m-claude"
    assert hits[-1].path == "/v1/messages" and hits[-1].auth in (ANTHROPIC_KEY, f"Bearer {ANTHROPIC_KEY}")


def test_directed_label_and_generic_routing(model_hub: Hub, spokes: list[Spoke], tmp_path: Path,
                                            llm: ThreadedLLM) -> None:
    gpu = Spoke(tmp_path, model_hub, extra=["--label", "gpu", "--max-workstreams", "1"])
    plain = Spoke(tmp_path, model_hub, extra=["--max-workstreams", "2"])
    spokes += [gpu, plain]
    gpu.join()
    plain.join()
    marker = llm.script("route", [Say("routed")])
    directed = model_hub.client().send_and_wait(f"{marker} a", spoke=plain.name)
    assert ws_row(model_hub, directed["id"])["spoke"] == plain.name
    labelled = model_hub.client().send_and_wait(f"{marker} b", label="gpu")
    assert ws_row(model_hub, labelled["id"])["spoke"] == gpu.name
    # Capacity counts busy workstreams (issue 15: idle ones hold no slot). With gpu's only
    # slot busy (1/1), generic work goes to plain.
    hang = llm.script("route-hang", [Hang("busy")])
    busy = start_ws(model_hub, f"{hang} keep gpu busy", spoke=gpu.name)
    wait_state(model_hub, busy, "thinking")
    generic = model_hub.client().send_and_wait(f"{marker} c")
    assert ws_row(model_hub, generic["id"])["spoke"] == plain.name
    llm.release()
    wait_state(model_hub, busy, "idle")
    # Follow-ups go to the owning spoke.
    model_hub.client().send_and_wait("again", ws_id=labelled["id"])
    assert ws_row(model_hub, labelled["id"])["spoke"] == gpu.name
    # A label nobody carries waits in the queue instead of running anywhere.
    waiting = start_ws(model_hub, f"{marker} d", label="tpu")
    assert ws_row(model_hub, waiting)["state"] == "queued"
    bad = model_hub.cli("ws", "new", "--spoke", "no-such-spoke", "--no-wait", "hi")
    assert bad.returncode == 2 and "no-such-spoke" in bad.stderr


def test_queued_with_no_spoke_survives_restart_then_starts_when_one_joins(
        model_hub: Hub, spokes: list[Spoke], tmp_path: Path, llm: ThreadedLLM) -> None:
    marker = llm.script("queued", [Say("finally running")])
    ws_id = start_ws(model_hub, f"{marker} wait for a spoke")
    assert ws_row(model_hub, ws_id)["state"] == "queued"
    model_hub.stop()
    model_hub.start()
    assert ws_row(model_hub, ws_id)["state"] == "queued"
    late = Spoke(tmp_path, model_hub)
    spokes.append(late)
    late.join()
    wait_state(model_hub, ws_id, "idle")
    assert ws_row(model_hub, ws_id)["spoke"] == late.name
    texts = [e["data"]["text"] for e in ws_events(model_hub, ws_id) if e["kind"] == "assistant_message"]
    assert texts == ["finally running"]


def test_transcript_and_pending_approval_survive_a_hub_restart(model_hub: Hub, model_spoke: Spoke,
                                                               llm: ThreadedLLM) -> None:
    marker = llm.script("restart", [Call("bash", {"command": "echo after-restart"}),
                                    Echo("got {last_tool_result}")])
    ws_id = start_ws(model_hub, f"{marker} go")
    call_id = wait_state(model_hub, ws_id, "attention")["pending_approvals"][0]["call_id"]
    before = model_hub.cli_json("ws", "show", ws_id)["events"]
    model_hub.stop()
    model_hub.start()
    model_spoke.wait_connected()
    after = model_hub.cli_json("ws", "show", ws_id)
    assert after["events"][:len(before)] == before, "the transcript must be intact after a restart"
    assert after["state"] == "attention" and after["pending_approvals"][0]["call_id"] == call_id
    model_hub.cli("ws", "approve", ws_id, call_id, check=True)
    wait_state(model_hub, ws_id, "idle")
    events = ws_events(model_hub, ws_id)
    assert "after-restart" in [e for e in events if e["kind"] == "assistant_message"][-1]["data"]["text"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence numbers have no gaps or repeats"
    # A reader resuming from the middle sees exactly the rest.
    middle = seqs[len(seqs) // 2]
    assert [e["seq"] for e in ws_events(model_hub, ws_id, after=middle)] == seqs[seqs.index(middle) + 1:]


def test_provider_error_and_malformed_output_put_the_workstream_in_error(
        model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("broken", [Fail(400, "context too long for this scripted model")])
    result = model_hub.client().send_and_wait(f"{marker} hi", auto_approve=True)
    assert result["state"] == "error"
    assert "context too long" in result["error"]
    assert "context too long" in (ws_row(model_hub, result["id"])["error"] or "")

    marker = llm.script("garbled", [Malformed("bash", '{"command": "echo hi"')])
    res = model_hub.cli("ws", "new", "--auto-approve", f"{marker} hi")
    assert res.returncode == 1 and "malformed" in res.stderr

    # The hub keeps serving: a healthy workstream still completes.
    marker = llm.script("healthy", [Say("still fine")])
    assert model_hub.client().send_and_wait(f"{marker} ok")["answer"] == "still fine"


def test_async_client_streams_events_and_resumes(model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    import asyncio

    from client.async_client import AsyncHubClient

    marker = llm.script("sdk", [Hang("partial "), Say("done now")])

    async def scenario() -> None:
        async with AsyncHubClient.from_data_dir(model_hub.dir) as client:
            ws_id = (await client.request("POST", "/api/ws", {"message": f"{marker} stream"}))["id"]
            seen: list[int] = []
            async for event in client.events(ws_id):
                seen.append(event["seq"])
                if event["kind"] == "text_delta":
                    break
            llm.release()
            rest = []
            async for event in client.events(ws_id, after=seen[-1]):
                rest.append(event)
                if event["kind"] == "state" and event["data"]["state"] == "idle":
                    break
            assert [e["seq"] for e in rest] == list(range(seen[-1] + 1, seen[-1] + 1 + len(rest)))
            follow = await client.send_and_wait("more", ws_id=ws_id)
            assert follow["state"] == "idle" and follow["answer"] == "done now"

    asyncio.run(scenario())


def test_an_unanswered_approval_is_denied_at_the_configured_deadline(
        model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    bad = model_hub.cli("serve", "--approval-timeout", "soon", "--port", "0")
    assert bad.returncode == 2 and "--approval-timeout" in bad.stderr
    model_hub.stop()
    model_hub.extra = ["--approval-timeout", "2s"]
    model_hub.start()
    model_spoke.wait_connected()
    marker = llm.script("deadline", [Call("bash", {"command": "echo should-not-run"}),
                                     Echo("tool said: {last_tool_result}")])
    ws_id = start_ws(model_hub, f"{marker} go")
    wait_state(model_hub, ws_id, "attention")
    wait_state(model_hub, ws_id, "idle")
    events = ws_events(model_hub, ws_id)
    decided = next(e for e in events if e["kind"] == "approval_decided")
    assert decided["data"]["approved"] is False and "deadline" in decided["data"]["reason"]
    result = next(e for e in events if e["kind"] == "tool_result")
    assert result["data"]["is_error"] and "should-not-run" not in result["data"]["output"]


def test_a_spoke_declared_model_is_routed_to_that_spoke(
        model_hub: Hub, spokes: list[Spoke], tmp_path: Path, llm: ThreadedLLM) -> None:
    models = tmp_path / "gpu-models.toml"
    models.write_text(f"""
[models.gpu-local]
provider = "openai"
base_url = "{llm.server.openai_url}"
model = "m-local-gpu"
api_key = "spoke-local-key"
""")
    plain = Spoke(tmp_path, model_hub)
    gpu = Spoke(tmp_path, model_hub, extra=["--models-file", str(models)])
    spokes += [plain, gpu]
    plain.join()
    gpu.join()
    marker = llm.script("local-model", [Say("from the spoke's own GPU")])
    for _ in range(2):  # whatever the load, only the spoke that has the model can take it
        result = model_hub.client().send_and_wait(f"{marker} hi", model="gpu-local")
        assert result["answer"] == "from the spoke's own GPU"
        assert ws_row(model_hub, result["id"])["spoke"] == gpu.name
    hits = [r for r in llm.requests() if "[script:local-model]" in json.dumps(r.body)]
    assert {r.model for r in hits} == {"m-local-gpu"} and {r.auth for r in hits} == {"Bearer spoke-local-key"}
    unknown = model_hub.cli("ws", "new", "--model", "nobody-has-this", "--no-wait", "hi")
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr


def test_bad_workstream_requests_get_clear_errors_and_lose_nothing(model_hub: Hub) -> None:
    from client.http_client import ApiError

    client = model_hub.client()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"message": ""}, "empty"),
        ({"message": "x" * 200_001}, "limit"),
        ({"message": "hi", "spoke": "a", "label": "b"}, "not both"),
        ({"message": "hi", "model": "nope"}, "unknown model"),
        ({"message": 42}, "message"),
        ({}, "message"),
    ]
    for body, needle in cases:
        try:
            client.request("POST", "/api/ws", body)
        except ApiError as err:
            assert err.status == 400 and err.code.value == "invalid" and needle in err.message, (body, err)
        else:
            raise AssertionError(f"{body!r:.80} was accepted")
    for path, status in [("/api/ws/ws_0000000000000000", 404), ("/api/ws/ws_0000000000000000/events?after=x", 400)]:
        try:
            client.request("GET", path)
        except ApiError as err:
            assert err.status == status, (path, err)
        else:
            raise AssertionError(f"{path} succeeded")
    assert client.request("GET", "/api/ws") == [], "no workstream was created by a bad request"
    ws_id = start_ws(model_hub, "queued while no spoke is here")
    assert ws_row(model_hub, ws_id)["state"] == "queued"


def test_a_large_prompt_crosses_the_relay_whole(model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("large", [Say("read it all")])
    big = f"{marker} " + "0123456789abcdef" * 10_000  # 160 KB: many TCP reads at the relay
    result = model_hub.client().send_and_wait(big)
    assert result["state"] == "idle" and result["answer"] == "read it all", result["error"]
    [hit] = [r for r in llm.requests() if "[script:large]" in json.dumps(r.body)]
    assert any(m.get("content") == big for m in hit.body["messages"] if m.get("role") == "user")


def test_cancel_while_thinking_and_close_with_a_pending_approval(
        model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("think", [Hang("let me think about "), Say("after the cancel")])
    ws_id = start_ws(model_hub, f"{marker} ponder")
    wait_until(lambda: any(e["kind"] == "text_delta" for e in ws_events(model_hub, ws_id)),
               what="the answer to start streaming")
    assert llm.hanging == 1
    model_hub.cli("ws", "cancel", ws_id, check=True)
    wait_state(model_hub, ws_id, "idle")
    wait_until(lambda: llm.hanging == 0, what="the model request to be abandoned")
    follow = model_hub.client().send_and_wait("go on", ws_id=ws_id)
    assert follow["answer"] == "after the cancel"

    marker = llm.script("close-pending", [Call("edit_file", {"path": "x", "old": "a", "new": "b"})])
    ws2 = start_ws(model_hub, f"{marker} edit")
    wait_state(model_hub, ws2, "attention")
    box = ws_row(model_hub, ws2)["box_id"]
    closed = model_hub.cli_json("ws", "close", ws2)
    assert closed["state"] == "closed" and closed["pending_approvals"] == []
    resolved = [e for e in ws_events(model_hub, ws2) if e["kind"] == "approval_resolved_by_hub"]
    assert len(resolved) == 1 and resolved[0]["data"]["approved"] is False
    wait_until(lambda: not docker.from_env().containers.list(
        all=True, filters={"label": f"spokehub.box={box}"}), what="the closed workstream's box to go")
    again = model_hub.cli("ws", "send", "--no-wait", ws2, "hello?")
    assert again.returncode == 2 and "closed" in again.stderr


def test_a_directed_workstream_the_spoke_refuses_by_policy_fails_clearly(
        model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    res = model_hub.cli("ws", "new", "--spoke", model_spoke.name, "--image", "not-allowed:latest", "hi")
    assert res.returncode == 1 and "not allowed" in res.stderr, res.stderr
    [row] = [w for w in model_hub.client().request("GET", "/api/ws")]
    assert row["state"] == "error" and "not allowed" in row["error"]
    assert not [r for r in llm.requests()], "the model was never called"
