"""``hub ws`` as a user drives it (issue 15, items 1 and 11): the approval hint it prints can be
pasted as is, follow-ups print only what is new, and ``ws wait`` / ``ws approve`` without a
call id make the agent flow scriptable (the README runs exactly that)."""

from __future__ import annotations

import json
import os
import re
import subprocess

from tests.cluster import HUB, Hub, Spoke
from tests.llm_server import Call, Echo, Say
from tests.ws_helpers import ThreadedLLM, wait_state, ws_row


def _env(hub: Hub) -> dict[str, str]:
    return {**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)}


def test_the_printed_approval_hint_works_when_pasted(model_hub: Hub, model_spoke: Spoke,
                                                     llm: ThreadedLLM) -> None:
    marker = llm.script("hint", [Call("write_file", {"path": "hinted.txt", "content": "yes\n"}),
                                 Say("the file is written")])
    proc = subprocess.Popen([HUB, "ws", "new", "--spoke", model_spoke.name, f"{marker} write it"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(model_hub))
    assert proc.stderr is not None
    seen: list[str] = []
    command = ""
    for line in proc.stderr:
        seen.append(line)
        if "hub ws approve" in line:
            command = line.strip().split("    or    ")[0]
            break
    assert command, f"no approval hint in: {seen}"
    ws_id = re.search(r"ws_[0-9a-f]{16}", command)
    assert ws_id is not None, command
    # The "[ws_… running on spoke …]" line names the workstream too (it printed "[ running…" before).
    assert any(f"[{ws_id.group(0)} running on spoke {model_spoke.name}]" in s for s in seen), seen
    pasted = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=_env(model_hub),
                            timeout=60)
    assert pasted.returncode == 0, pasted.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "the file is written" in out
    assert ws_row(model_hub, ws_id.group(0))["state"] == "idle"


def test_a_follow_up_prints_only_what_is_new(model_hub: Hub, model_spoke: Spoke,
                                             llm: ThreadedLLM) -> None:
    marker = llm.script("followup", [Say("first answer"), Say("second answer")])
    first = model_hub.cli("ws", "new", "--json", f"{marker} one", check=True)
    ws_id = json.loads(first.stdout)["id"]
    again = model_hub.cli("ws", "send", ws_id, "two", check=True)
    assert "second answer" in again.stdout
    assert "first answer" not in again.stdout + again.stderr, "the old conversation was re-printed"


def test_wait_and_approve_without_a_call_id(model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    marker = llm.script("scripted", [Call("bash", {"command": "echo from-the-box"}),
                                     Echo("it said {last_tool_result}")])
    ws_id = model_hub.cli("ws", "new", "--no-wait", "--spoke", model_spoke.name, f"{marker} go",
                          check=True).stdout.strip()
    waited = model_hub.cli("ws", "wait", ws_id, check=True, timeout=120)
    assert f"hub ws approve {ws_id} " in waited.stderr and "attention" in waited.stderr
    approved = model_hub.cli("ws", "approve", ws_id, check=True)
    assert "approved" in approved.stdout
    done = model_hub.cli("ws", "wait", ws_id, check=True, timeout=120)
    assert "it said from-the-box" in done.stdout and f"[{ws_id} idle]" in done.stderr
    assert wait_state(model_hub, ws_id, "idle")["pending_approvals"] == []
    none_left = model_hub.cli("ws", "approve", ws_id)
    assert none_left.returncode == 2 and "no tool call waiting" in none_left.stderr


def test_no_model_configured_names_hub_toml_and_shows_a_snippet(hub: Hub) -> None:
    res = hub.cli("ws", "new", "hello")
    assert res.returncode == 2, res.stderr
    assert str(hub.dir / "hub.toml") in res.stderr
    assert "[models.local]" in res.stderr and 'provider = "openai"' in res.stderr
