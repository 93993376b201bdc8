"""Reading a workstream's event log as turns: when has the agent answered a message?

Shared by the synchronous client (CLI) and the async SDK so both agree on what "the reply"
is: the text of the assistant messages after the last user message, complete once the
workstream settles (idle, error or closed) after that message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SETTLED = ("idle", "error", "closed")


@dataclass
class Turn:
    """Tracks one exchange from the seq of its user message on."""

    after_seq: int = 0
    answer_parts: list[str] = field(default_factory=list)
    state: str = ""
    error: str = ""
    done: bool = False
    pending_approvals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def feed(self, event: dict[str, Any]) -> None:
        if event["seq"] <= self.after_seq:
            return
        kind, data = event["kind"], event.get("data") or {}
        if kind == "assistant_message" and data.get("text"):
            self.answer_parts.append(str(data["text"]))
        elif kind == "approval_requested":
            self.pending_approvals[str(data.get("call_id"))] = data
        elif kind in ("approval_resolved", "approval_decided", "approval_resolved_by_hub"):
            self.pending_approvals.pop(str(data.get("call_id")), None)
        elif kind == "error":
            self.error = str(data.get("message", ""))
        elif kind == "state":
            self.state = str(data.get("state", ""))
            if data.get("error"):
                self.error = str(data["error"])
            if self.state in SETTLED:
                self.done = True

    @property
    def answer(self) -> str:
        return self.answer_parts[-1] if self.answer_parts else ""

    @staticmethod
    def may_wait_for_approval(event: dict[str, Any]) -> bool:
        """An event after which the workstream may be waiting for an approval: the request
        itself, or the ``attention`` state (the hub records the approval row right after the
        request event, so a reader checking only at the request can look too early)."""
        data = event.get("data") or {}
        return event["kind"] == "approval_requested" or (
            event["kind"] == "state" and data.get("state") == "attention")

    def needs_approval(self, row: dict[str, Any]) -> bool:
        """True when the hub's row (the durable truth, unlike a replayed event) says the
        workstream waits for an approval."""
        return row.get("state") == "attention" and bool(row.get("pending_approvals"))

    def result(self, ws_id: str, transcript: list[dict[str, Any]],
               pending: list[dict[str, Any]]) -> dict[str, Any]:
        """What ``wait_reply`` returns, the same from the sync and the async client."""
        state = "attention" if pending and not self.done else self.state
        return {"id": ws_id, "answer": self.answer, "state": state, "error": self.error,
                "transcript": transcript, "pending_approvals": pending}

