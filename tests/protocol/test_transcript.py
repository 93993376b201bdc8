"""protocol.transcript: the neutral transcript rebuilt from a workstream's event log."""

from __future__ import annotations

from typing import Any

from protocol.transcript import INTERRUPTED_MARK, bounded, from_events


def ev(kind: str, **data: Any) -> dict[str, Any]:
    return {"kind": kind, "data": data}


def test_a_turn_with_text_tools_and_a_final_answer() -> None:
    events = [
        ev("user_message", text="run it"),
        ev("state", state="thinking"),
        ev("text_delta", text="Let me "), ev("text_delta", text="look."),
        ev("assistant_message", text="Let me look."),
        ev("usage", model="m", input_tokens=1, output_tokens=1),
        ev("tool_call", call_id="c1", tool="bash", args={"command": "ls"}, approval="auto"),
        ev("tool_call", call_id="c2", tool="read_file", args={"path": "a"}, approval="auto"),
        ev("state", state="running"),
        ev("tool_result", call_id="c1", tool="bash", output="a\n", is_error=False),
        ev("tool_result", call_id="c2", tool="read_file", output="x", is_error=True),
        ev("state", state="thinking"),
        ev("assistant_message", text="There is a."),
        ev("state", state="idle"),
    ]
    assert from_events(events) == [
        {"role": "user", "text": "run it"},
        {"role": "assistant", "text": "Let me look.", "tool_calls": [
            {"id": "c1", "name": "bash", "arguments": {"command": "ls"}},
            {"id": "c2", "name": "read_file", "arguments": {"path": "a"}}]},
        {"role": "tool", "results": [
            {"call_id": "c1", "name": "bash", "output": "a\n", "is_error": False},
            {"call_id": "c2", "name": "read_file", "output": "x", "is_error": True}]},
        {"role": "assistant", "text": "There is a.", "tool_calls": []},
    ]


def test_tool_calls_without_text_open_their_own_assistant_entry() -> None:
    events = [ev("user_message", text="go"), ev("state", state="thinking"),
              ev("tool_call", call_id="c1", tool="bash", args={}),
              ev("tool_result", call_id="c1", tool="bash", output="ok", is_error=False),
              ev("state", state="thinking"),
              ev("tool_call", call_id="c2", tool="bash", args={})]
    history = from_events(events)
    assert [h["role"] for h in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1]["tool_calls"][0]["id"] == "c1" and history[3]["tool_calls"][0]["id"] == "c2"
    # c2 has no result (the spoke died): the model clients' normalize() answers it.


def test_streamed_text_of_an_interrupted_turn_is_kept_and_marked() -> None:
    events = [ev("user_message", text="hi"), ev("state", state="thinking"),
              ev("text_delta", text="half an ans"), ev("user_message", text="still there?")]
    assert from_events(events) == [
        {"role": "user", "text": "hi"},
        {"role": "assistant", "text": "half an ans" + INTERRUPTED_MARK, "tool_calls": []},
        {"role": "user", "text": "still there?"},
    ]


def test_messages_queued_during_a_turn_merge_into_one_user_entry() -> None:
    events = [ev("user_message", text="one"), ev("user_message", text="two"),
              ev("waiting", reason="x"), ev("notice", message="y"), ev("assigned", spoke="s")]
    assert from_events(events) == [{"role": "user", "text": "one\n\ntwo"}]


def test_bounded_keeps_the_newest_part_and_starts_at_a_user_message() -> None:
    history: list[dict[str, Any]] = [{"role": "user", "text": "u" * 100},
               {"role": "assistant", "text": "a" * 100, "tool_calls": []},
               {"role": "user", "text": "v" * 100},
               {"role": "assistant", "text": "b" * 100, "tool_calls": []},
               {"role": "tool", "results": [{"call_id": "c", "name": "n", "output": "o" * 10,
                                             "is_error": False}]}]
    assert bounded(history, limit=10_000) == history
    kept = bounded(history, limit=480)
    assert kept[0] == {"role": "user", "text": "v" * 100} and kept[-1] == history[-1]
    assert bounded(history, limit=10) == []
