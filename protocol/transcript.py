"""The neutral transcript, rebuilt from a workstream's event log (pure).

The hub's append-only event log is the source of truth of every conversation. When a spoke
loses a workstream's agent loop (it restarted, or the workstream moves to another spoke), the
hub rebuilds the conversation from the log and hands it to ``ws.start`` as ``history``; the
agent loop (``spoke/agent/loop.py``) continues from it. The format is the one
``spoke/agent/llm.py`` specifies, so this module is where hub and spoke agree on it:

``{"role": "user", "text": str}``
``{"role": "assistant", "text": str, "tool_calls": [{"id", "name", "arguments": dict}]}``
``{"role": "tool", "results": [{"call_id", "name", "output": str, "is_error": bool}]}``

Events used (the loop's event contract): ``user_message``, ``text_delta``,
``assistant_message``, ``tool_call``, ``tool_result`` and ``state`` (a ``thinking`` state
starts a model turn). A turn cut short keeps the text streamed so far, marked
``[interrupted]``; tool calls without a result are left for the model clients' ``normalize``,
which answers them as interrupted. Pinned by ``tests/protocol/test_transcript.py``.
"""

from __future__ import annotations

from typing import Any

INTERRUPTED_MARK = " [interrupted]"
# What a resumed conversation may carry in one ws.start frame (the frame limit is 1 MiB and
# the JSON and base64 around it need room): older entries are dropped first.
MAX_HISTORY_CHARS = 600_000


class _Builder:
    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []
        self.turn: dict[str, Any] | None = None  # the assistant entry of the current model turn
        self.partial: list[str] = []  # text streamed in the current turn, not yet a message

    def end_turn(self) -> None:
        if self.partial and self.turn is None:
            text = "".join(self.partial) + INTERRUPTED_MARK
            self.out.append({"role": "assistant", "text": text, "tool_calls": []})
        self.partial, self.turn = [], None

    def assistant(self) -> dict[str, Any]:
        if self.turn is None:
            self.turn = {"role": "assistant", "text": "", "tool_calls": []}
            self.out.append(self.turn)
            self.partial = []
        return self.turn

    def feed(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "user_message":
            self.end_turn()
            text = str(data.get("text", ""))
            last = self.out[-1] if self.out else None
            if last is not None and last["role"] == "user":
                last["text"] += "\n\n" + text  # messages queued while a turn ran: one entry
            else:
                self.out.append({"role": "user", "text": text})
        elif kind == "state" and data.get("state") == "thinking":
            self.end_turn()
        elif kind == "text_delta":
            if self.turn is None:
                self.partial.append(str(data.get("text", "")))
        elif kind == "assistant_message":
            self.assistant()["text"] = str(data.get("text", ""))
        elif kind == "tool_call":
            call: dict[str, Any] = {"id": str(data.get("call_id", "")), "name": str(data.get("tool", "")),
                    "arguments": data.get("args") if isinstance(data.get("args"), dict) else {}}
            self.assistant()["tool_calls"].append(call)
        elif kind == "tool_result":
            result = {"call_id": str(data.get("call_id", "")), "name": str(data.get("tool", "")),
                      "output": str(data.get("output", "")), "is_error": bool(data.get("is_error"))}
            last = self.out[-1] if self.out else None
            if last is not None and last["role"] == "tool":
                last["results"].append(result)
            else:
                self.out.append({"role": "tool", "results": [result]})


def from_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation the events tell, oldest first (``events`` as the hub's log holds them:
    dicts with ``kind`` and ``data``, in sequence order)."""
    builder = _Builder()
    for event in events:
        builder.feed(str(event.get("kind", "")), dict(event.get("data") or {}))
    builder.end_turn()
    return builder.out


def _size(entry: dict[str, Any]) -> int:
    size = len(str(entry.get("text", "")))
    for call in entry.get("tool_calls") or ():
        size += len(str(call.get("arguments"))) + 64
    for result in entry.get("results") or ():
        size += len(str(result.get("output", ""))) + 64
    return size + 64


def bounded(history: list[dict[str, Any]], limit: int = MAX_HISTORY_CHARS) -> list[dict[str, Any]]:
    """The newest part of ``history`` that fits ``limit`` characters, starting at a user
    message (a conversation may not open with tool results)."""
    total, start = 0, len(history)
    for index in range(len(history) - 1, -1, -1):
        total += _size(history[index])
        if total > limit:
            break
        start = index
    while start < len(history) and history[start]["role"] != "user":
        start += 1
    return history[start:]
