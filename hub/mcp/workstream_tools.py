"""Agent workstream tools of the MCP front-end, over the hub's ``WorkstreamService``.

Registered only when the hub has a workstream service. A chatbot starts an agent on a spoke
(by name, by label, or any with capacity), follows it with ``get_workstream`` from a cursor
(the event log is the source of truth, so a reconnecting client neither loses nor repeats an
event), answers approval requests, and can cancel it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from hub.mcp.cluster_tools import DESTRUCTIVE, MUTATING, READ_ONLY, caller, tool_registrar
from hub.workstreams.service import WorkstreamService

WsArg = Annotated[str, Field(description="Workstream id (ws_ + 16 hex digits) from start_workstream.")]
CallArg = Annotated[str, Field(description="The call_id of a pending approval (see "
                                           "pending_approvals in get_workstream).")]
ReasonArg = Annotated[str, Field(max_length=2000, description="Optional note for the agent.")]
MAX_EVENTS = 500
MAX_WAIT_S = 30.0


def _summary(ws: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "state", "spoke", "model", "error", "last_seq", "title", "auto_approve",
            "box_id", "created_at", "updated_at", "pending_approvals")
    return {k: ws[k] for k in keep if k in ws}


def register_workstream_tools(server: MCPServer, service: WorkstreamService) -> None:
    """Start, steer, follow and cancel agent workstreams through the hub's service (the same
    one the REST API uses). Pinned by
    ``tests/test_mcp.py::test_workstream_with_an_approval_round_trip``."""
    tool = tool_registrar(server)

    @tool(MUTATING)
    async def start_workstream(
        message: Annotated[str, Field(min_length=1, description="The task for the agent.")],
        spoke: Annotated[str | None, Field(description="Run on this spoke (omit for any).")] = None,
        label: Annotated[str | None, Field(description="Run on a spoke with this label.")] = None,
        model: Annotated[str | None, Field(description="Model alias (default: the hub's).")] = None,
        image: Annotated[str | None, Field(description="Box image for the agent's tools.")] = None,
        auto_approve: Annotated[bool, Field(description="Run tool calls without asking. If "
                                            "false, each waits for approve_call/deny_call.")] = False,
        on_loss: Annotated[Literal["resume", "interrupt"], Field(
            description="If its spoke is lost: resume on another suitable spoke from the "
                        "transcript, or end the turn as interrupted.")] = "resume",
    ) -> dict[str, Any]:
        """Start an agent workstream: an LLM agent on a spoke whose tools (shell, files) run in
        its own box. Give a spoke or a label, or neither for any spoke with capacity. Returns
        the workstream id and state; follow it with get_workstream."""
        ws = await service.start(message, spoke=spoke, label=label, model=model, image=image,
                                 auto_approve=auto_approve, owner=caller(), on_loss=on_loss)
        return _summary(ws)

    @tool(MUTATING)
    async def send_message(
        workstream: WsArg,
        message: Annotated[str, Field(min_length=1, description="A follow-up for the agent.")],
    ) -> dict[str, Any]:
        """Send a follow-up message to a workstream (it goes to the spoke that owns it)."""
        return _summary(await service.send(workstream, message))

    @tool(READ_ONLY)
    async def get_workstream(
        workstream: WsArg,
        cursor: Annotated[int, Field(ge=0, description="0 at first, then the cursor the "
                                     "previous call returned.")] = 0,
        wait_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S, description="If there are no new "
                                       "events yet, wait up to this long for some.")] = 0.0,
        limit: Annotated[int, Field(ge=1, le=MAX_EVENTS, description="At most this many "
                                    "events.")] = 200,
    ) -> dict[str, Any]:
        """State of a workstream (idle, thinking, running, attention = waiting for an approval,
        error, closed), its pending approvals, and the events after ``cursor`` (text, tool
        calls and results, state changes) with the next cursor to pass back."""
        if wait_s > 0:
            events = await service.wait_events(workstream, cursor, wait_s)
        else:
            events = await service.events(workstream, after=cursor, limit=limit)
        events = events[:limit]
        ws = await service.get(workstream)
        return {
            "workstream": _summary(ws),
            "events": events,
            "cursor": events[-1]["seq"] if events else cursor,
            "more": bool(events) and events[-1]["seq"] < int(ws.get("last_seq", 0)),
        }

    @tool(MUTATING)
    async def approve_call(workstream: WsArg, call_id: CallArg, reason: ReasonArg = "") -> dict[str, Any]:
        """Approve a tool call the agent is waiting on; it then runs in the workstream's box."""
        return dict(await service.decide(workstream, call_id, True, reason))

    @tool(MUTATING)
    async def deny_call(workstream: WsArg, call_id: CallArg, reason: ReasonArg = "") -> dict[str, Any]:
        """Deny a tool call the agent is waiting on; the agent is told (with your reason)."""
        return dict(await service.decide(workstream, call_id, False, reason))

    @tool(DESTRUCTIVE)
    async def cancel_workstream(workstream: WsArg) -> dict[str, Any]:
        """Stop what the workstream is doing now (pending approvals are resolved as
        cancelled). The workstream and its transcript remain."""
        return _summary(await service.cancel(workstream))
