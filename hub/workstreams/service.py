"""Agent workstreams at the hub: the public service (start, send, decide, cancel, close), the
events spokes stream back, and durable approvals; leasing and recovery are in
hub/workstreams/leasing.py, the log in hub/workstreams/journal.py.

The hub never runs an agent. It leases each workstream to a spoke (directed by name or label,
or generic: a connected spoke with a free slot and the model, least loaded first), records
every event the spoke streams back, and keeps what must survive anything — the queue, the
transcript, approvals and their decisions — in SQLite. A lease that the spoke refuses, or
that fails because the spoke vanished before accepting, goes back to the queue.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hub import metrics
from hub.audit import record
from hub.model_config import ModelsConfig
from hub.registry import Registry
from hub.spoke_link import SpokeLink
from hub.store import Store
from hub.workstreams.journal import SPOKE_STATES, Journal
from hub.workstreams.leasing import Leasing
from hub.workstreams.moves import ON_LOSS, Moves
from hub.workstreams.store import WorkstreamStore
from protocol import messages
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import new_id
from protocol.verbs import MAX_MESSAGE_CHARS

log = logging.getLogger("spokehub.hub.workstreams")


def _check_message(message: str) -> None:
    """Refuse at the door what the ws.start/ws.send verbs could never carry to a spoke."""
    if not message.strip():
        raise RemoteError(ErrorCode.INVALID, "message must not be empty")
    if len(message) > MAX_MESSAGE_CHARS:
        raise RemoteError(ErrorCode.INVALID, f"message is {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}")


class WorkstreamService:
    """The hub's side of agent workstreams: what the REST API, the web chat and MCP call.

    The hub keeps the truth (rows, inbox, approvals, the append-only event log in
    :mod:`hub.workstreams.store`); spokes run the agent loops. Routing and leases live in
    :mod:`hub.workstreams.leasing`, the event log's writes and waits in
    :mod:`hub.workstreams.journal`. Pinned without processes by
    tests/hub/test_workstreams_memory.py, end to end by tests/test_workstreams_e2e.py,
    tests/test_ws_capacity.py and tests/test_ws_cli.py.
    """

    def __init__(self, store: Store, registry: Registry, models: Callable[[], ModelsConfig], *,
                 approval_timeout_s: float | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 models_file: Path | None = None, resume_grace_s: float = 15.0) -> None:
        self.store, self.registry, self.models = store, registry, models
        self.models_file = models_file
        # clock: wall time (approval deadlines, as stored); monotonic: waits and back-offs.
        self.approval_timeout_s, self.clock, self.monotonic = approval_timeout_s, clock, monotonic
        self.db = WorkstreamStore(store)
        self.journal = Journal(self.db, monotonic)
        self.leasing = Leasing(store, registry, self.journal, models, monotonic=monotonic,
                               on_pass=self._on_pass)
        self.moves = Moves(registry, self.journal, self.leasing, grace_s=resume_grace_s,
                           monotonic=monotonic)
        registry.on_notification["ws.event"] = self._ingest

    # ------------------------------------------------------------- lifecycle
    def start_scheduler(self) -> None:
        self.leasing.start()

    async def stop(self) -> None:
        await self.leasing.stop()

    def kick(self) -> None:
        self.leasing.kick()

    # ------------------------------------------------------------ public API
    async def start(self, message: str, *, spoke: str | None = None, label: str | None = None,
                    model: str | None = None, image: str | None = None, auto_approve: bool = False,
                    owner: str = "", on_loss: str = "resume") -> dict[str, Any]:
        """Record a new workstream (queued) and its first message, then let the scheduler
        lease it to a spoke: ``spoke`` directs it, ``label`` narrows it, neither is "any".
        Refused before anything is recorded when it could never run (no such model or
        spoke). Pinned by tests/hub/test_workstreams_memory.py::
        test_generic_work_goes_to_the_least_loaded_spoke_and_queues_with_a_reason and
        tests/test_workstreams_e2e.py::test_bad_workstream_requests_get_clear_errors_and_lose_nothing."""
        _check_message(message)
        if spoke and label:
            raise RemoteError(ErrorCode.INVALID, "give a spoke or a label, not both")
        if on_loss not in ON_LOSS:
            raise RemoteError(ErrorCode.INVALID, f"on_loss must be one of {', '.join(ON_LOSS)}")
        config = self.models()
        alias = model or config.default
        if alias is None:
            raise RemoteError(ErrorCode.INVALID, self._no_model_hint())
        if alias not in config.models and not any(alias in link.models for link in self.registry.live_links()):
            raise RemoteError(ErrorCode.INVALID, f"unknown model {alias!r} (configured: {', '.join(config.models) or 'none'})")
        if spoke is not None and await self.store.get_spoke(spoke) is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no spoke {spoke!r}")
        ws_id = new_id("ws")
        await self.db.create({"id": ws_id, "spoke": None, "want_spoke": spoke, "want_label": label,
                              "model": alias, "image": image, "auto_approve": int(auto_approve),
                              "state": "queued", "title": message.strip()[:120], "owner": owner,
                              "on_loss": on_loss})
        await self.db.inbox_add(ws_id, message)
        event = await self.journal.append(ws_id, "user_message", {"text": message})
        await self.journal.append(ws_id, "state", {"state": "queued"})
        await record(self.store, "ws.start", ws_id, f"model {alias}: {message.strip()[:200]}",
                     spoke=spoke or "")
        self.leasing.kick()
        return {**await self.get(ws_id), "message_seq": event["seq"] if event else 0}

    async def send(self, ws_id: str, message: str) -> dict[str, Any]:
        """Add a message to a workstream: delivered now if its spoke has room, else kept (the
        row's ``waiting`` says why) and delivered when it can be. A workstream whose agent its
        spoke lost is resumed from the transcript. One that can never continue is refused
        before anything is recorded. Pinned by tests/test_ws_capacity.py."""
        ws = await self._open(ws_id)
        _check_message(message)
        await self._check_can_continue(ws)
        await self.db.inbox_add(ws_id, message)
        event = await self.journal.append(ws_id, "user_message", {"text": message})
        await record(self.store, "ws.send", ws_id, message.strip()[:200], spoke=ws["spoke"] or "")
        await self.leasing.deliver_pending(ws_id)
        return {**await self.get(ws_id), "message_seq": event["seq"] if event else 0}

    async def get(self, ws_id: str) -> dict[str, Any]:
        """One workstream's row with its pending approvals; ``not_found`` if unknown."""
        ws = await self.db.get(ws_id)
        if ws is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no workstream {ws_id}")
        ws["auto_approve"] = bool(ws["auto_approve"])
        ws["detached"] = bool(ws["detached"])
        ws["pending_approvals"] = await self.db.approvals(ws_id, "pending")
        ws["last_message_seq"] = await self.db.last_user_seq(ws_id)
        return ws

    async def list(self) -> builtins.list[dict[str, Any]]:
        """The most recent workstreams, newest first (the dashboard's and ``hub ws ls``)."""
        rows = await self.db.recent()
        for row in rows:
            row["auto_approve"] = bool(row["auto_approve"])
            row["detached"] = bool(row["detached"])
        return rows

    async def events(self, ws_id: str, after: int = 0, limit: int = 500) -> builtins.list[dict[str, Any]]:
        """The log after cursor ``after`` (a sequence number): every reader resumes from its
        last seen seq and never sees an event twice. Pinned by
        tests/test_workstreams_e2e.py::test_async_client_streams_events_and_resumes."""
        await self.get(ws_id)
        return await self.db.events(ws_id, after, limit)

    async def wait_events(self, ws_id: str, after: int, timeout: float) -> builtins.list[dict[str, Any]]:
        await self.get(ws_id)
        return await self.journal.wait_events(ws_id, after, timeout)

    async def decide(self, ws_id: str, call_id: str, approve: bool, reason: str = "") -> dict[str, Any]:
        """Approve or deny one waiting tool call, once (a second decision is ``invalid``);
        durable at the hub, delivered to the spoke now or when it is back. Pinned by
        tests/test_workstreams_e2e.py::test_approval_ask_then_approve_and_ask_then_deny."""
        ws = await self._open(ws_id)
        approval = await self.db.approval_get(ws_id, call_id)
        if approval is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no approval {call_id} in {ws_id}")
        if approval["state"] != "pending":
            raise RemoteError(ErrorCode.INVALID, f"approval {call_id} is already {approval['state']}")
        state = "approved" if approve else "denied"
        if not await self.db.approval_decide(ws_id, call_id, state, reason):
            raise RemoteError(ErrorCode.INVALID, f"approval {call_id} was decided concurrently")
        await self.journal.append(ws_id, "approval_decided", {"call_id": call_id, "approved": approve, "reason": reason})
        await record(self.store, "approval.decided", ws_id,
                     f"{call_id} {state}" + (f": {reason}" if reason else ""), spoke=ws["spoke"] or "")
        await self.leasing.deliver_approval(ws["spoke"], ws_id, call_id, approve, reason)
        return {"ws_id": ws_id, "call_id": call_id, "state": state}

    async def cancel(self, ws_id: str) -> dict[str, Any]:
        """Stop the current turn (the tool's process is killed in the box) and resolve its
        approvals as cancelled; the workstream stays open for more messages. Pinned by
        tests/test_workstreams_e2e.py::test_cancel_mid_tool_call_kills_the_process."""
        ws = await self._open(ws_id)
        await record(self.store, "ws.cancel", ws_id, spoke=ws["spoke"] or "")
        await self.journal.resolve_approvals(ws_id, "cancelled")
        if ws["state"] == "queued":
            await self.journal.set_state(ws_id, "closed", "cancelled before it started")
            return await self.get(ws_id)
        await self.leasing.tell(ws["spoke"], v.WS_CANCEL, v.WsRef(ws_id=ws_id))
        await self.journal.append(ws_id, "cancelled", {})
        return await self.get(ws_id)

    async def close(self, ws_id: str) -> dict[str, Any]:
        """End a workstream for good: approvals resolved as closed, its box removed (now, or
        by reconcile when its spoke is back). Idempotent. Pinned by
        tests/test_workstreams_e2e.py::test_cancel_while_thinking_and_close_with_a_pending_approval."""
        ws = await self.db.get(ws_id)
        if ws is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no workstream {ws_id}")
        if ws["state"] == "closed":
            return await self.get(ws_id)
        await record(self.store, "ws.close", ws_id, spoke=ws["spoke"] or "")
        await self.journal.resolve_approvals(ws_id, "closed")
        done = await self.leasing.tell(ws["spoke"], v.WS_CLOSE, v.WsRef(ws_id=ws_id))
        removed = done is not None and done.known
        if done is not None and not done.known and ws["box_id"]:
            # Its agent is gone (the spoke restarted), its box may not be.
            removed = await self.leasing.tell(ws["spoke"], v.BOX_DESTROY, v.BoxRef(box_id=ws["box_id"])) is not None
        if ws["box_id"]:
            # Not removed now: reconcile reaps it when the spoke is back (only "running" boxes
            # are kept).
            await self.store.set_box_state(ws["box_id"], "destroyed" if removed else "closing")
        await self.db.update(ws_id, waiting="")
        await self.journal.set_state(ws_id, "closed")
        await self.store.run_ended(ws_id, "closed")
        self.leasing.kick()
        return await self.get(ws_id)

    # -------------------------------------------------------------- internals
    def _no_model_hint(self) -> str:
        where = str(self.models_file) if self.models_file else "hub.toml in the hub's data dir"
        return ("no model given and no default model configured at the hub: add one to "
                f"{where}, for example\n"
                '  [models.local]\n  provider = "openai"          # or "anthropic"\n'
                '  base_url = "http://127.0.0.1:8000/v1"\n  model = "qwen3-32b"\n'
                '  api_key = "..."\n'
                "then restart the hub (docs/agents.md has the details)")

    async def _check_can_continue(self, ws: dict[str, Any]) -> None:
        """Refuse at once a message that could never be answered, rather than keep it."""
        ws_id = ws["id"]
        if ws["state"] == "error" and not ws["spoke"] and not ws["box_id"] and ws["want_spoke"]:
            raise RemoteError(ErrorCode.INVALID, f"workstream {ws_id} cannot continue: "
                              f"{ws['error'] or 'it never started'}; start a new one")
        home = ws["spoke"] or ws["want_spoke"]
        if not home:
            return
        row = await self.store.get_spoke(home)
        if row is not None and row["revoked_at"] is None:
            return
        if ws["want_spoke"]:
            raise RemoteError(ErrorCode.INVALID, f"workstream {ws_id} cannot continue: it runs only "
                              f"on spoke {home}, which {'was revoked' if row else 'does not exist'}")
        # Generic work moves on: another spoke resumes it from the transcript, in a new box.
        await self.db.update(ws_id, spoke=None, box_id="", detached=1)
        await self.journal.append(ws_id, "notice", {"message": f"spoke {home} was revoked: the "
                                             "conversation continues on another spoke, in a new box"})

    async def _open(self, ws_id: str) -> dict[str, Any]:
        ws = await self.db.get(ws_id)
        if ws is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no workstream {ws_id}")
        if ws["state"] == "closed":
            raise RemoteError(ErrorCode.INVALID, f"workstream {ws_id} is closed")
        return ws

    async def _on_pass(self) -> None:
        await self._expire_approvals()
        await self.moves.on_pass()

    async def _expire_approvals(self) -> None:
        """With a configured deadline, an unanswered approval counts as a denial (the model is
        told why); without one, approvals wait as long as it takes."""
        if not self.approval_timeout_s:
            return
        limit = self.approval_timeout_s
        for approval in await self.db.approvals_pending_before(self.clock() - limit):
            with contextlib.suppress(RemoteError):  # answered or closed meanwhile
                await self.decide(approval["ws_id"], approval["call_id"], False,
                                  f"no answer within the approval deadline ({limit:g} s)")

    async def _ingest(self, link: SpokeLink, params: BaseModel) -> None:
        assert isinstance(params, messages.WsEvent)
        ws = await self.db.get(params.ws_id)
        # The fence: only the spoke that holds the workstream's current lease speaks for it;
        # an agent it was moved away from, or that handed it back, is heard no more (and is
        # closed when its spoke reconnects: Leasing._spoke_connected).
        ours = ws is not None and ws["spoke"] == link.name and not ws["detached"]
        if ws is not None and ours and params.kind != "user_message":
            event = await self.journal.append(params.ws_id, params.kind, params.data, params.sseq)
            if event is not None:
                await self._apply(link, ws, params.kind, params.data)
        elif ws is not None and ours:
            await self.db.update(params.ws_id, spoke_seq=max(ws["spoke_seq"], params.sseq))
        await link.notify("ws.ack", messages.WsEventAck(ws_id=params.ws_id, sseq=params.sseq))

    async def _apply(self, link: SpokeLink, ws: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
        ws_id = ws["id"]
        if kind == "state" and data.get("state") in SPOKE_STATES and ws["state"] != "closed":
            await self.db.update(ws_id, state=data["state"])
        elif kind == "approval_requested":
            await self.db.approval_add(ws_id, str(data.get("call_id")), str(data.get("tool")), data.get("args"))
            await self.store.audit("approval.requested", ws_id, f"{data.get('call_id')}: {data.get('tool')}")
        elif kind == "approval_resolved":
            state = "approved" if data.get("approved") else "denied"
            await self.db.approval_decide(ws_id, str(data.get("call_id")), state, str(data.get("reason", "")))
        elif kind == "usage":
            await self.db.usage_add(ws_id, link.name, str(data.get("model", "")),
                                    int(data.get("input_tokens", 0)), int(data.get("output_tokens", 0)))
            metrics.count_tokens(str(data.get("model", "")), int(data.get("input_tokens", 0)),
                                 int(data.get("output_tokens", 0)))
        elif kind == "error":
            await self.db.update(ws_id, error=str(data.get("message", ""))[:2000])
            await self.store.audit("ws.error", ws_id, str(data.get("message", "")))
