"""The chat in a real browser: real hub, real spoke, tools in a real Docker box, the scripted
LLM as the only stand-in. A tool call approved in the page, the reply streaming in, a
conversation reopened and continued, a hub crash and restart mid-conversation that loses and
repeats nothing, streams blocked (long-polling instead), cancel, and model and tool output that
try to inject HTML."""

from __future__ import annotations

import signal
from typing import Any

from playwright.sync_api import expect

from tests.cluster import Spoke, wait_until
from tests.llm_server import Call, Echo, Hang, Say
from tests.web.conftest import Cluster, goto, screenshot, sign_in
from tests.ws_helpers import ws_events, ws_row

ASSISTANT = "#panes .pane:not([hidden]) .msg-assistant"
USER = "#panes .pane:not([hidden]) .msg-user"
CALL = "#panes .pane:not([hidden]) .tool-call"


def _start_chat(page: Any, message: str, spoke: str = "", model: str = "", auto: bool = False) -> str:
    """Start a workstream from the page; returns its id (from the URL)."""
    if spoke:
        page.select_option("#new-chat select[name=spoke]", spoke)
    if model:
        page.select_option("#new-chat select[name=model]", model)
    if auto:
        page.check("#new-chat input[name=auto_approve]")
    page.fill("#composer textarea", message)
    page.press("#composer textarea", "Enter")
    page.wait_for_url("**/chat#ws_*")
    return str(page.url.rsplit("#", 1)[1])


def test_approve_a_tool_call_in_the_page_and_watch_the_reply_stream(
        page: Any, cluster: Cluster, home_spoke: Spoke) -> None:
    hub, llm = cluster.hub, cluster.llm
    marker = llm.script("web-approve", [
        Call("bash", {"command": "echo approved-from-the-page"}),
        Hang("The box said **approved-from-the-page**."),
        Call("write_file", {"path": "said.txt", "content": "approved-from-the-page\n"}),
    ])
    sign_in(page, hub, "admin", cluster.password, "/chat")
    ws_id = _start_chat(page, f"{marker} run the command", spoke=home_spoke.name)
    expect(page.locator(USER)).to_have_text(f"you{marker} run the command")

    # The call waits for approval, with its arguments shown and the two buttons.
    call = page.locator(CALL)
    expect(call.locator(".tool-args")).to_have_text("$ echo approved-from-the-page")
    expect(call.locator("button.approve")).to_be_visible()
    expect(call.locator("button.deny")).to_be_visible()
    expect(page.locator("#conv-state")).to_have_text("attention")
    call.locator("button.approve").click()
    expect(call.locator(".tool-output")).to_have_text("approved-from-the-page\n[exit code 0]")
    expect(call.locator(".call-status")).to_have_text("done")
    expect(call.locator("button")).to_have_count(0)

    # The reply streams in: shown while the model is still writing (it is parked mid-answer).
    streaming = page.locator(f"{ASSISTANT}.streaming")
    expect(streaming.locator("strong")).to_have_text("approved-from-the-page")
    wait_until(lambda: llm.hanging == 1, what="the model parked mid-answer")
    assert ws_row(hub, ws_id)["state"] == "thinking"
    llm.release()
    expect(page.locator(f"{ASSISTANT}:not(.streaming)")).to_have_count(1)
    expect(page.locator(ASSISTANT)).to_have_text("agentThe box said approved-from-the-page.")
    expect(page.locator("#conv-state")).to_have_text("idle")
    decided = [e for e in ws_events(hub, ws_id) if e["kind"] == "approval_decided"]
    assert decided and decided[0]["data"]["approved"] is True

    # Continue the conversation: this time the call is denied, with a reason.
    page.fill("#composer textarea", "now save that in a file")
    page.click("#send")
    second = page.locator(CALL).nth(1)
    expect(second.locator(".tool-name")).to_have_text("write_file")
    expect(second.locator("button.deny")).to_be_visible()
    expect(page.locator(f"#ws-list li[data-ws='{ws_id}'] .badge")).to_have_text("attention")
    screenshot(page, "chat.png")
    second.locator("input.reason").fill("not today")
    second.locator("button.deny").click()
    expect(second.locator(".call-status")).to_have_text("denied: not today")
    expect(second.locator(".tool-output")).to_contain_text("denied by the operator: not today")
    expect(page.locator(ASSISTANT)).to_have_count(2)
    expect(page.locator(ASSISTANT).last).to_have_text("agentdone")

    # Reopened from scratch, it is the same transcript, each event drawn once.
    goto(page, page.url, reload=True)
    page.wait_for_selector(f"#ws-list li.active[data-ws='{ws_id}']")
    expect(page.locator(ASSISTANT)).to_have_count(2)
    expect(page.locator(USER)).to_have_count(2)
    expect(page.locator(CALL)).to_have_count(2)
    expect(page.locator(f"{CALL} button")).to_have_count(0)
    expect(page.locator(CALL).first.locator(".tool-output")).to_have_text("approved-from-the-page\n[exit code 0]")
    expect(page.locator(CALL).nth(1).locator(".call-status")).to_have_text("denied: not today")

    # ... and it goes on: a message sent after the reload is answered in the same pane.
    page.fill("#composer textarea", "anything else?")
    page.click("#send")
    expect(page.locator(ASSISTANT)).to_have_count(3)
    expect(page.locator(ASSISTANT).last).to_have_text("agentdone")
    expect(page.locator(USER)).to_have_count(3)


def test_two_workstreams_side_by_side_in_the_list_switch_without_mixing(
        page: Any, cluster: Cluster, home_spoke: Spoke) -> None:
    hub, llm = cluster.hub, cluster.llm
    first_marker = llm.script("web-first", [Say("first answer")])
    second_marker = llm.script("web-second", [Say("second answer")])
    sign_in(page, hub, "admin", cluster.password, "/chat")
    first = _start_chat(page, f"{first_marker} one", spoke=home_spoke.name)
    expect(page.locator(ASSISTANT)).to_have_text("agentfirst answer")
    page.click("#new")  # "New chat": an empty composer
    page.wait_for_url("**/chat")
    second = _start_chat(page, f"{second_marker} two", spoke=home_spoke.name)
    assert second != first
    expect(page.locator(ASSISTANT)).to_have_text("agentsecond answer")
    expect(page.locator(USER)).to_have_text(f"you{second_marker} two")

    # Back to the first: its own transcript, nothing of the second; and back again.
    page.click(f"#ws-list li[data-ws='{first}']")
    page.wait_for_url(f"**/chat#{first}")
    expect(page.locator(USER)).to_have_text(f"you{first_marker} one")
    expect(page.locator(ASSISTANT)).to_have_text("agentfirst answer")
    page.fill("#composer textarea", "and again")
    page.click("#send")
    expect(page.locator(ASSISTANT)).to_have_count(2)
    page.click(f"#ws-list li[data-ws='{second}']")
    expect(page.locator(USER)).to_have_text(f"you{second_marker} two")
    expect(page.locator(ASSISTANT)).to_have_count(1)
    page.click(f"#ws-list li[data-ws='{first}']")
    expect(page.locator(ASSISTANT)).to_have_count(2)  # drawn once each, after switching twice
    expect(page.locator(ASSISTANT).last).to_have_text("agentdone")


def test_a_hub_crash_mid_conversation_loses_and_repeats_nothing(
        page: Any, cluster: Cluster, home_spoke: Spoke) -> None:
    hub, llm = cluster.hub, cluster.llm
    marker = llm.script("web-restart", [Call("bash", {"command": "echo after-restart"}),
                                        Echo("it said {last_tool_result}")])
    sign_in(page, hub, "admin", cluster.password, "/chat")
    ws_id = _start_chat(page, f"{marker} go", spoke=home_spoke.name)
    expect(page.locator(f"{CALL} button.approve")).to_be_visible()
    page.evaluate("window.__sameDocument = true")

    assert hub.proc is not None
    hub.proc.stop(signal.SIGKILL)  # a crash: nothing is said to anyone
    expect(page.locator("#conv-live")).to_have_text("reconnecting")
    hub.start()
    home_spoke.wait_connected()
    expect(page.locator("#conv-live")).to_have_text("live", timeout=30_000)

    page.locator(f"{CALL} button.approve").click()
    expect(page.locator(ASSISTANT)).to_contain_text("it said after-restart")
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(CALL)).to_have_count(1)
    assert page.evaluate("window.__sameDocument === true")
    seqs = page.evaluate("() => [...document.querySelectorAll('#panes .msg-user')].map(e => e.dataset.seq)")
    assert len(seqs) == len(set(seqs)) == 1
    assert ws_row(hub, ws_id)["state"] == "idle"


def test_cancel_a_turn_from_the_page(page: Any, cluster: Cluster, home_spoke: Spoke) -> None:
    hub, llm = cluster.hub, cluster.llm
    marker = llm.script("web-cancel", [Hang("working on it")])
    sign_in(page, hub, "admin", cluster.password, "/chat")
    ws_id = _start_chat(page, f"{marker} a long one", spoke=home_spoke.name)
    expect(page.locator(f"{ASSISTANT}.streaming")).to_have_text("agentworking on it")
    page.click("#cancel")
    expect(page.locator("#panes .pane:not([hidden]) .line.notice", has_text="cancelled")).to_be_visible()
    expect(page.locator("#conv-state")).to_have_text("idle")
    wait_until(lambda: llm.hanging == 0, what="the model call dropped")
    assert ws_row(hub, ws_id)["state"] == "idle"


def test_with_streams_blocked_the_chat_long_polls(page: Any, cluster: Cluster, home_spoke: Spoke) -> None:
    """A proxy that breaks streaming (here: every stream request fails) costs nothing but
    latency: the page long-polls the events instead."""
    hub, llm = cluster.hub, cluster.llm
    page.route("**/api/ws/*/stream*", lambda route: route.abort())
    marker = llm.script("web-poll", [Call("bash", {"command": "echo polled"}), Echo("got {last_tool_result}")])
    sign_in(page, hub, "admin", cluster.password, "/chat")
    _start_chat(page, f"{marker} poll please", spoke=home_spoke.name)
    page.locator(f"{CALL} button.approve").click()
    expect(page.locator(ASSISTANT)).to_contain_text("got polled")
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(CALL)).to_have_count(1)
    expect(page.locator("#conv-live")).to_have_text("polling")


def test_model_and_tool_output_cannot_inject_html(page: Any, cluster: Cluster, home_spoke: Spoke) -> None:
    hub, llm = cluster.hub, cluster.llm
    nasty = ("<script>window.__xss = 1</script>\n\n"
             "<img src=x onerror=\"window.__xss = 2\"> and **bold** and "
             "[a link](javascript:window.__xss=3) and `<b>code</b>`")
    marker = llm.script("web-xss", [
        Call("bash", {"command": "echo '<img src=x onerror=window.__xss=4>'"}),
        Say(nasty, pieces=5),
    ])
    sign_in(page, hub, "admin", cluster.password, "/chat")
    ws_id = _start_chat(page, f"{marker} be nasty", spoke=home_spoke.name, model="claude", auto=True)
    reply = page.locator(f"{ASSISTANT}:not(.streaming)")
    expect(reply.locator("strong")).to_have_text("bold")
    text = reply.inner_text()
    assert "<script>window.__xss = 1</script>" in text
    assert '<img src=x onerror="window.__xss = 2">' in text
    assert "a link (javascript:window.__xss=3)" in text
    expect(reply.locator("code")).to_have_text("<b>code</b>")
    expect(page.locator(f"{CALL} .tool-output")).to_contain_text("<img src=x onerror=window.__xss=4>\n")
    panes = page.locator("#panes .pane")
    for tag in ("script", "img", "b", "a[href^='javascript']"):
        assert panes.locator(tag).count() == 0, tag
    assert page.evaluate("window.__xss") is None
    assert ws_row(hub, ws_id)["model"] == "claude"  # the model chosen in the page
    assert any(r.path.endswith("/v1/messages") for r in llm.requests())  # claude: the Anthropic API


def test_the_dashboard_lists_the_workstreams_and_opens_a_transcript_live(
        page: Any, cluster: Cluster, home_spoke: Spoke) -> None:
    hub, llm = cluster.hub, cluster.llm
    marker = llm.script("web-dash", [Call("write_file", {"path": "notes.txt", "content": "hi\n"}),
                                     Say("wrote it")])
    ws_id = str(hub.client().request("POST", "/api/ws", {"message": f"{marker} write notes",
                                                         "spoke": home_spoke.name})["id"])
    sign_in(page, hub, "admin", cluster.password)
    row = page.locator(f"#workstreams tr[data-ws='{ws_id}']")
    expect(row).to_have_attribute("data-state", "attention")
    expect(row).to_contain_text("1 waiting")
    row.locator("a").click()
    detail = page.locator("#detail")
    expect(detail.locator(".tool-call .tool-name")).to_have_text("write_file")
    detail.locator("button.approve").click()
    expect(detail.locator(".msg-assistant")).to_have_text("agentwrote it")
    expect(detail.locator(".badge").first).to_have_text("idle")
    expect(row).to_have_attribute("data-state", "idle")
