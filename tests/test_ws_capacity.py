"""Workstream capacity and survival on real hub and spoke processes (issue 15, items 2 and 3).

Capacity is about work running now: idle workstreams hold no slot, a queued one says why it
waits, a follow-up to an idle workstream on a full spoke waits (saying so) for a slot. An idle
workstream survives its spoke restarting: the next message continues it from the hub's
transcript, in its old box when that still exists, else in a new one (saying so). A message to
a workstream that can never continue is refused at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import docker

from tests.cluster import Hub, Spoke, wait_until
from tests.llm_server import Call, Echo, Hang, Say
from tests.ws_helpers import ThreadedLLM, kinds, start_ws, wait_state, ws_events, ws_row


def _capped(tmp_path: Path, hub: Hub, spokes: list[Spoke], slots: int) -> Spoke:
    spoke = Spoke(tmp_path, hub, extra=["--max-workstreams", str(slots)])
    spokes.append(spoke)
    spoke.join()
    return spoke


def test_finished_workstreams_hold_no_slot(model_hub: Hub, spokes: list[Spoke], tmp_path: Path,
                                          llm: ThreadedLLM) -> None:
    spoke = _capped(tmp_path, model_hub, spokes, 2)
    marker = llm.script("cap-done", [Say("done here")])
    finished = [model_hub.client().send_and_wait(f"{marker} n{i}", auto_approve=True) for i in range(3)]
    # Before the fix the third waited forever: two idle workstreams filled the spoke's 2 slots.
    assert [r["state"] for r in finished] == ["idle"] * 3
    assert {ws_row(model_hub, r["id"])["spoke"] for r in finished} == {spoke.name}


def test_a_queued_workstream_says_why_it_waits_and_starts_when_a_slot_frees(
        model_hub: Hub, spokes: list[Spoke], tmp_path: Path, llm: ThreadedLLM) -> None:
    spoke = _capped(tmp_path, model_hub, spokes, 1)
    hang = llm.script("cap-hang", [Hang("working"), Say("first done")])
    busy = start_ws(model_hub, f"{hang} occupy the slot")
    wait_state(model_hub, busy, "thinking")
    marker = llm.script("cap-next", [Say("second done")])
    queued = start_ws(model_hub, f"{marker} wait your turn")
    reason = f"waiting: no connected spoke has a free slot ({spoke.name}: 1/1 busy)"
    wait_until(lambda: ws_row(model_hub, queued)["waiting"] == reason, what="the waiting reason")
    assert ws_row(model_hub, queued)["state"] == "queued"
    shown = model_hub.cli("ws", "show", queued)
    assert reason in shown.stderr, shown.stderr
    assert any(e["kind"] == "waiting" and e["data"]["reason"] == reason
               for e in ws_events(model_hub, queued)), "the reason is in the transcript too"
    llm.release()
    wait_state(model_hub, busy, "idle")
    wait_state(model_hub, queued, "idle")
    row = ws_row(model_hub, queued)
    assert row["waiting"] == "" and row["spoke"] == spoke.name


def test_a_follow_up_waits_for_a_slot_on_its_spoke(model_hub: Hub, spokes: list[Spoke],
                                                   tmp_path: Path, llm: ThreadedLLM) -> None:
    spoke = _capped(tmp_path, model_hub, spokes, 1)
    marker = llm.script("cap-follow", [Say("one"), Say("two")])
    first = model_hub.client().send_and_wait(f"{marker} hello")
    hang = llm.script("cap-block", [Hang("blocking")])
    blocker = start_ws(model_hub, f"{hang} hold the only slot")
    wait_state(model_hub, blocker, "thinking")
    model_hub.client().request("POST", f"/api/ws/{first['id']}/messages", {"message": "and again"})
    wait_until(lambda: "no free slot" in ws_row(model_hub, first["id"])["waiting"],
               what="the follow-up to say it waits for a slot")
    assert spoke.name in ws_row(model_hub, first["id"])["waiting"]
    llm.release()
    wait_until(lambda: [e["data"]["text"] for e in ws_events(model_hub, first["id"])
                        if e["kind"] == "assistant_message"] == ["one", "two"],
               what="the follow-up to be answered once the slot freed")
    assert ws_row(model_hub, first["id"])["waiting"] == ""


def test_an_idle_workstream_survives_its_spoke_restarting(model_hub: Hub, model_spoke: Spoke,
                                                          llm: ThreadedLLM) -> None:
    marker = llm.script("survive", [
        Call("write_file", {"path": "kept.txt", "content": "made before the restart\n"}),
        Say("wrote kept.txt"),
        Call("bash", {"command": "cat kept.txt"}),
        Echo("after the restart it says: {last_tool_result}"),
    ])
    first = model_hub.client().send_and_wait(f"{marker} write a file", auto_approve=True)
    assert first["state"] == "idle"
    box_id = ws_row(model_hub, first["id"])["box_id"]
    model_spoke.stop()
    model_spoke.run()
    # Before the fix the restart turned the workstream into "error" and a send hung.
    wait_until(lambda: "notice" in kinds(ws_events(model_hub, first["id"])), what="the notice")
    row = ws_row(model_hub, first["id"])
    assert row["state"] == "idle" and row["detached"] is True
    res = model_hub.cli("ws", "send", first["id"], "what is in kept.txt?")
    assert res.returncode == 0, res.stderr
    assert "made before the restart" in res.stdout
    assert "resumed on spoke" in res.stderr
    row = ws_row(model_hub, first["id"])
    assert row["state"] == "idle" and row["box_id"] == box_id and row["detached"] is False
    # The model saw the earlier conversation: the hub's transcript went to the new loop.
    last = [r for r in llm.requests() if "[script:survive]" in json.dumps(r.body)][-1]
    assert "wrote kept.txt" in json.dumps(last.body)


def test_a_resumed_workstream_whose_box_is_gone_gets_a_new_one_and_says_so(
        model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("newbox", [Say("first answer"), Call("bash", {"command": "ls /workspace | wc -l"}),
                                   Echo("files: {last_tool_result}")])
    first = model_hub.client().send_and_wait(f"{marker} hi", auto_approve=True)
    box_id = ws_row(model_hub, first["id"])["box_id"]
    model_spoke.stop()
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": f"spokehub.box={box_id}"}):
        container.remove(force=True)
    model_spoke.run()
    result = model_hub.client().send_and_wait("count the files", ws_id=first["id"])
    assert result["state"] == "idle", result
    notices = [e["data"]["message"] for e in result["transcript"] if e["kind"] == "notice"]
    assert any("previous box was gone" in n for n in notices), notices
    assert client.containers.list(filters={"label": f"spokehub.box={box_id}"}), "a new box runs"


def test_a_message_that_can_never_be_answered_is_refused_at_once(
        model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("revoked", [Say("hello")])
    first = model_hub.client().send_and_wait(f"{marker} hi", spoke=model_spoke.name)
    model_hub.cli("spoke", "revoke", model_spoke.name, check=True)
    res = model_hub.cli("ws", "send", first["id"], "are you there?", timeout=30)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert f"runs only on spoke {model_spoke.name}, which was revoked" in res.stderr
    texts = [e["data"]["text"] for e in ws_events(model_hub, first["id"]) if e["kind"] == "user_message"]
    assert texts == [f"{marker} hi"], "a refused message is not recorded"


def test_closing_a_workstream_its_spoke_lost_removes_its_box_at_once(
        model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("close-lost", [Say("hi")])
    first = model_hub.client().send_and_wait(f"{marker} hi")
    box_id = ws_row(model_hub, first["id"])["box_id"]
    model_spoke.stop()
    model_spoke.run()
    wait_until(lambda: ws_row(model_hub, first["id"])["detached"], what="the workstream to be detached")
    model_hub.cli("ws", "close", first["id"], check=True)
    # The spoke no longer ran its agent, but its box was there: it goes now, not at a reconnect.
    assert not docker.from_env().containers.list(all=True, filters={"label": f"spokehub.box={box_id}"})
    boxes = model_hub.cli_json("box", "ls", "--all")
    assert box_id not in [b["id"] for b in boxes]
