"""Agent workstreams at the hub: routing, the persisted queue, event log, durable approvals.

The hub never runs an agent. It leases each workstream to a spoke (directed by name or label,
or generic: a connected spoke with a free slot and the model, least loaded first), records
every event the spoke streams back, and keeps what must survive anything — the queue, the
transcript, approvals and their decisions — in SQLite. A lease that the spoke refuses, or
that fails because the spoke vanished before accepting, goes back to the queue.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hub import metrics
from hub.model_config import ModelsConfig
from hub.registry import Registry
from hub.spoke_link import SpokeLink
from hub.store import Store
from hub.workstreams import routing
from hub.workstreams.store import WorkstreamStore
from protocol import messages, transcript
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import new_id
from protocol.verbs import MAX_MESSAGE_CHARS, P, R, Verb

log = logging.getLogger("spokehub.hub.workstreams")
TERMINAL = ("closed",)
SPOKE_STATES = {"idle", "thinking", "running", "attention", "error"}
BUSY_STATES = ("starting", "thinking", "running", "attention")  # what holds a spoke's slot


def _check_message(message: str) -> None:
    """Refuse at the door what the ws.start/ws.send verbs could never carry to a spoke."""
    if not message.strip():
        raise RemoteError(ErrorCode.INVALID, "message must not be empty")
    if len(message) > MAX_MESSAGE_CHARS:
        raise RemoteError(ErrorCode.INVALID, f"message is {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}")


class WorkstreamService:
    def __init__(self, store: Store, registry: Registry, models: Callable[[], ModelsConfig], *,
                 approval_timeout_s: float | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 models_file: Path | None = None) -> None:
        self.store, self.registry, self.models = store, registry, models
        self.models_file = models_file
        # clock: wall time (approval deadlines, as stored); monotonic: waits and back-offs.
        self.approval_timeout_s, self.clock, self.monotonic = approval_timeout_s, clock, monotonic
        self.db = WorkstreamStore(store)
        self._waiters: dict[str, asyncio.Event] = {}
        self._kick = asyncio.Event()
        self._leasing: set[str] = set()
        self._refused: dict[tuple[str, str], float] = {}  # (ws, spoke) -> until
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        registry.on_connected.append(self._spoke_connected)
        registry.on_disconnected.append(self._spoke_disconnected)
        registry.on_notification["ws.event"] = self._ingest

    # ------------------------------------------------------------- lifecycle
    def start_scheduler(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._scheduler())

    async def stop(self) -> None:
        """Stop the scheduler for good. Cancelling once is not enough on Python 3.11:
        ``asyncio.wait_for`` can swallow a cancel that arrives as its wait ends (a kick at
        the same moment), so keep cancelling until the task is done."""
        self._stopping = True
        task = self._task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    def kick(self) -> None:
        self._kick.set()

    # ------------------------------------------------------------ public API
    async def start(self, message: str, *, spoke: str | None = None, label: str | None = None,
                    model: str | None = None, image: str | None = None, auto_approve: bool = False,
                    owner: str = "") -> dict[str, Any]:
        _check_message(message)
        if spoke and label:
            raise RemoteError(ErrorCode.INVALID, "give a spoke or a label, not both")
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
                              "state": "queued", "title": message.strip()[:120], "owner": owner})
        await self.db.inbox_add(ws_id, message)
        event = await self._append(ws_id, "user_message", {"text": message})
        await self._append(ws_id, "state", {"state": "queued"})
        self.kick()
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
        event = await self._append(ws_id, "user_message", {"text": message})
        await self._deliver_pending(ws_id)
        return {**await self.get(ws_id), "message_seq": event["seq"] if event else 0}

    async def get(self, ws_id: str) -> dict[str, Any]:
        ws = await self.db.get(ws_id)
        if ws is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no workstream {ws_id}")
        ws["auto_approve"] = bool(ws["auto_approve"])
        ws["detached"] = bool(ws["detached"])
        ws["pending_approvals"] = await self.db.approvals(ws_id, "pending")
        ws["last_message_seq"] = await self.db.last_user_seq(ws_id)
        return ws

    async def list(self) -> builtins.list[dict[str, Any]]:
        rows = await self.db.recent()
        for row in rows:
            row["auto_approve"] = bool(row["auto_approve"])
        return rows

    async def events(self, ws_id: str, after: int = 0, limit: int = 500) -> builtins.list[dict[str, Any]]:
        await self.get(ws_id)
        return await self.db.events(ws_id, after, limit)

    async def wait_events(self, ws_id: str, after: int, timeout: float) -> builtins.list[dict[str, Any]]:
        deadline = self.monotonic() + timeout
        while True:
            waiter = self._waiters.setdefault(ws_id, asyncio.Event())
            found = await self.events(ws_id, after)
            remaining = deadline - self.monotonic()
            if found or remaining <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)

    async def decide(self, ws_id: str, call_id: str, approve: bool, reason: str = "") -> dict[str, Any]:
        ws = await self._open(ws_id)
        approval = await self.db.approval_get(ws_id, call_id)
        if approval is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no approval {call_id} in {ws_id}")
        if approval["state"] != "pending":
            raise RemoteError(ErrorCode.INVALID, f"approval {call_id} is already {approval['state']}")
        state = "approved" if approve else "denied"
        if not await self.db.approval_decide(ws_id, call_id, state, reason):
            raise RemoteError(ErrorCode.INVALID, f"approval {call_id} was decided concurrently")
        await self._append(ws_id, "approval_decided", {"call_id": call_id, "approved": approve, "reason": reason})
        await self._deliver_approval(ws["spoke"], ws_id, call_id, approve, reason)
        return {"ws_id": ws_id, "call_id": call_id, "state": state}

    async def cancel(self, ws_id: str) -> dict[str, Any]:
        ws = await self._open(ws_id)
        await self._resolve_approvals(ws_id, "cancelled")
        if ws["state"] == "queued":
            await self._set_state(ws_id, "closed", "cancelled before it started")
            return await self.get(ws_id)
        await self._tell(ws["spoke"], v.WS_CANCEL, v.WsRef(ws_id=ws_id))
        await self._append(ws_id, "cancelled", {})
        return await self.get(ws_id)

    async def close(self, ws_id: str) -> dict[str, Any]:
        ws = await self.db.get(ws_id)
        if ws is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no workstream {ws_id}")
        if ws["state"] == "closed":
            return await self.get(ws_id)
        await self._resolve_approvals(ws_id, "closed")
        done = await self._tell(ws["spoke"], v.WS_CLOSE, v.WsRef(ws_id=ws_id))
        removed = done is not None and done.known
        if done is not None and not done.known and ws["box_id"]:
            # Its agent is gone (the spoke restarted), its box may not be.
            removed = await self._tell(ws["spoke"], v.BOX_DESTROY, v.BoxRef(box_id=ws["box_id"])) is not None
        if ws["box_id"]:
            # Not removed now: reconcile reaps it when the spoke is back (only "running" boxes
            # are kept).
            await self.store.set_box_state(ws["box_id"], "destroyed" if removed else "closing")
        await self.db.update(ws_id, waiting="")
        await self._set_state(ws_id, "closed")
        self.kick()
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
        await self._append(ws_id, "notice", {"message": f"spoke {home} was revoked: the "
                                             "conversation continues on another spoke, in a new box"})

    async def _open(self, ws_id: str) -> dict[str, Any]:
        ws = await self.db.get(ws_id)
        if ws is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no workstream {ws_id}")
        if ws["state"] == "closed":
            raise RemoteError(ErrorCode.INVALID, f"workstream {ws_id} is closed")
        return ws

    async def _append(self, ws_id: str, kind: str, data: dict[str, Any], sseq: int | None = None) -> dict[str, Any] | None:
        event = await self.db.append(ws_id, kind, data, sseq)
        if event is not None:
            metrics.WS_EVENTS.labels(kind if kind in metrics.KNOWN_EVENT_KINDS else "other").inc()
            waiter = self._waiters.pop(ws_id, None)
            if waiter is not None:
                waiter.set()
        return event

    async def _set_state(self, ws_id: str, state: str, error: str | None = None) -> None:
        fields: dict[str, Any] = {"state": state}
        if error is not None:
            fields["error"] = error
        await self.db.update(ws_id, **fields)
        await self._append(ws_id, "state", {"state": state, **({"error": error} if error else {})})

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

    async def _resolve_approvals(self, ws_id: str, why: str) -> None:
        for approval in await self.db.approvals(ws_id, "pending"):
            if await self.db.approval_decide(ws_id, approval["call_id"], "resolved", why):
                await self._append(ws_id, "approval_resolved_by_hub",
                                   {"call_id": approval["call_id"], "approved": False, "reason": why})

    async def _tell(self, spoke: str | None, verb: Verb[P, R], params: P) -> R | None:
        """Call ``verb`` on the workstream's spoke if it is connected; None when it is not,
        or the call failed (what could not be said now is said again at its reconnect)."""
        link = self.registry.live(spoke or "")
        if link is None:
            return None
        try:
            return await link.call(verb, params)
        except RemoteError as err:
            log.info("%s to spoke %s not delivered yet: %s", verb.name, spoke, err)
            return None

    async def _deliver_approval(self, spoke: str | None, ws_id: str, call_id: str, approve: bool, reason: str) -> None:
        decision = v.WsApprove(ws_id=ws_id, call_id=call_id, approved=approve, reason=reason)
        if await self._tell(spoke, v.WS_APPROVE, decision) is not None:
            await self.db.approval_delivered(ws_id, call_id)

    async def _ingest(self, link: SpokeLink, params: BaseModel) -> None:
        assert isinstance(params, messages.WsEvent)
        ws = await self.db.get(params.ws_id)
        if ws is not None and ws["spoke"] == link.name and params.kind != "user_message":
            event = await self._append(params.ws_id, params.kind, params.data, params.sseq)
            if event is not None:
                await self._apply(link, ws, params.kind, params.data)
        elif ws is not None and ws["spoke"] == link.name:
            await self.db.update(params.ws_id, spoke_seq=max(ws["spoke_seq"], params.sseq))
        await link.notify("ws.ack", messages.WsEventAck(ws_id=params.ws_id, sseq=params.sseq))

    async def _apply(self, link: SpokeLink, ws: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
        ws_id = ws["id"]
        if kind == "state" and data.get("state") in SPOKE_STATES and ws["state"] != "closed":
            await self.db.update(ws_id, state=data["state"])
        elif kind == "approval_requested":
            await self.db.approval_add(ws_id, str(data.get("call_id")), str(data.get("tool")), data.get("args"))
        elif kind == "approval_resolved":
            state = "approved" if data.get("approved") else "denied"
            await self.db.approval_decide(ws_id, str(data.get("call_id")), state, str(data.get("reason", "")))
        elif kind == "usage":
            await self.db.usage_add(ws_id, link.name, str(data.get("model", "")),
                                    int(data.get("input_tokens", 0)), int(data.get("output_tokens", 0)))
        elif kind == "error":
            await self.db.update(ws_id, error=str(data.get("message", ""))[:2000])

    # ------------------------------------------------------------ scheduling
    async def _scheduler(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), 2.0)
            self._kick.clear()
            try:
                await self._expire_approvals()
                await self._schedule_once()
            except Exception:  # the scheduler must outlive any one bad row
                log.exception("scheduling pass failed")

    async def _schedule_once(self) -> None:
        """Lease queued workstreams to spokes; deliver messages that waited for a slot."""
        for ws_id in await self.db.with_undelivered_messages():
            if ws_id not in self._leasing:
                await self._deliver_pending(ws_id)
        queued = [w for w in await self.db.in_state("queued") if w["id"] not in self._leasing]
        if not queued:
            return
        counts = await self.db.busy_counts()
        now = self.monotonic()
        hub_models = frozenset(self.models().models)
        candidates = [routing.Candidate(link.name, tuple(link.labels), tuple(link.models),
                                        link.max_workstreams)
                      for link in self.registry.live_links()]
        for ws in queued:
            refused = frozenset(name for (ws_id, name), until in self._refused.items()
                                if ws_id == ws["id"] and until > now)
            want = routing.Want(spoke=ws["spoke"] or ws["want_spoke"], label=ws["want_label"],
                                   model=ws["model"], hub_models=hub_models)
            name, why = routing.pick(want, candidates, counts, refused)
            if name is None:
                await self._set_waiting(ws["id"], why)
                continue
            counts[name] = counts.get(name, 0) + 1
            self._leasing.add(ws["id"])
            asyncio.get_running_loop().create_task(self._lease(ws, self.registry.link(name)))

    def _model_refs(self, alias: str, link: SpokeLink) -> builtins.list[dict[str, Any]]:
        config = self.models()
        refs: builtins.list[dict[str, Any]] = []
        if alias in link.models:
            refs.append({"alias": alias, "provider": "openai", "via": "spoke"})
        for m in config.chain(alias):
            refs.append({"alias": m.alias, "provider": m.provider, "via": "hub", "context_window": m.context_window})
        return refs

    async def _history(self, ws_id: str, pending: int) -> builtins.list[dict[str, Any]]:
        """The conversation before the ``pending`` undelivered messages, from the log."""
        events: builtins.list[dict[str, Any]] = []
        while page := await self.db.events(ws_id, events[-1]["seq"] if events else 0, 5000):
            events.extend(page)
        users = [e["seq"] for e in events if e["kind"] == "user_message"]
        cut = users[-pending] if 0 < pending <= len(users) else (events[-1]["seq"] + 1 if events else 0)
        return transcript.bounded(transcript.from_events([e for e in events if e["seq"] < cut]))

    async def _lease(self, ws: dict[str, Any], link: SpokeLink) -> None:
        """Start (or resume, from the transcript) the agent of ``ws`` on ``link``'s spoke."""
        ws_id = ws["id"]
        try:
            pending = await self.db.inbox_pending(ws_id)
            if not pending:
                await self._set_state(ws_id, "idle")
                return
            box_id = ws["box_id"] or new_id("bx")
            history = await self._history(ws_id, len(pending))
            await self.db.update(ws_id, spoke=link.name, state="starting", box_id=box_id, waiting="")
            await self._append(ws_id, "assigned", {"spoke": link.name, **({"resumed": True} if history else {})})
            box_row = await self.store.get_box(box_id)
            if box_row is None:
                await self.store.add_box(box_id, link.name, ws["image"] or "", {"workstream": ws_id})
            try:
                started = await link.call(v.WS_START, v.build(
                    v.WS_START, ws_id=ws_id, box_id=box_id, message=pending[0]["message"],
                    models=self._model_refs(ws["model"], link), image=ws["image"],
                    auto_approve=bool(ws["auto_approve"]), seq_base=ws["spoke_seq"],
                    history=history))
            except RemoteError as err:
                await self._lease_failed(ws, link, box_id, box_row is None, err)
                return
            await self.store.set_box_state(box_id, "running")
            await self.store.db_update_box_image(box_id, started.image)
            await self.db.update(ws_id, detached=0)
            await self.db.inbox_delivered(pending[0]["id"])
            for extra in pending[1:]:
                await link.call(v.WS_SEND, v.WsSend(ws_id=ws_id, message=extra["message"]))
                await self.db.inbox_delivered(extra["id"])
        finally:
            self._leasing.discard(ws_id)
            self.kick()

    async def _lease_failed(self, ws: dict[str, Any], link: SpokeLink, box_id: str, new_box: bool,
                            err: RemoteError) -> None:
        ws_id = ws["id"]
        if new_box:
            await self.store.set_box_state(box_id, "failed")
        if ws["want_spoke"] and err.code in (ErrorCode.DENIED, ErrorCode.INVALID):
            # The one spoke it may run on refuses it by policy: waiting cannot help.
            message = f"spoke {link.name} refused it: {err.message}"
            await self.db.update(ws_id, box_id="" if new_box else box_id, spoke=None if new_box else link.name)
            await self._append(ws_id, "error", {"message": message})
            await self.db.update(ws_id, error=message[:2000])
            await self._set_state(ws_id, "error")
            return
        self._refused[(ws_id, link.name)] = self.monotonic() + (5.0 if err.code is ErrorCode.BUSY else 30.0)
        keep = ws["spoke"] if ws["detached"] else None  # a resumed one waits for its box's spoke
        await self.db.update(ws_id, spoke=keep, state="queued", box_id="" if new_box else box_id)
        await self._append(ws_id, "lease_returned", {"spoke": link.name, "reason": str(err)})

    async def _deliver_pending(self, ws_id: str) -> None:
        """Hand undelivered messages to the workstream's spoke, or say why they wait."""
        ws = await self.db.get(ws_id)
        if ws is None or ws["state"] in ("queued", "starting", "closed") or ws_id in self._leasing:
            return  # a lease delivers the queue itself
        pending = await self.db.inbox_pending(ws_id)
        if not pending:
            return
        if not ws["spoke"] and not ws["detached"]:
            return  # never started (refused by its spoke): send() refuses more messages
        if ws["detached"]:
            await self._set_state(ws_id, "queued")  # its agent must be (re)started first
            self.kick()
            return
        link = self.registry.live(ws["spoke"])
        if link is None:
            await self._set_waiting(ws_id, f"waiting: spoke {ws['spoke']} is not connected")
            return
        for message in pending:
            try:
                await link.call(v.WS_SEND, v.WsSend(ws_id=ws_id, message=message["message"]))
            except RemoteError as err:
                if err.code is ErrorCode.NOT_FOUND:  # the spoke lost it since it last said
                    await self._detach(ws, f"spoke {link.name} no longer runs it")
                elif err.code is ErrorCode.BUSY:
                    await self._set_waiting(ws_id, f"waiting: spoke {link.name} has no free slot ({err.message})")
                else:
                    log.info("message for %s not delivered yet: %s", ws_id, err)
                return
            await self.db.inbox_delivered(message["id"])
        await self._set_waiting(ws_id, "")

    async def _set_waiting(self, ws_id: str, why: str) -> None:
        """Record why a workstream waits (shown by the API and CLI); an event when it changes."""
        ws = await self.db.get(ws_id)
        if ws is None or ws["waiting"] == why:
            return
        await self.db.update(ws_id, waiting=why)
        if why:
            await self._append(ws_id, "waiting", {"reason": why})

    async def _detach(self, ws: dict[str, Any], why: str) -> None:
        """The spoke lost this workstream's agent: keep everything at the hub and resume it
        from the transcript (in its old box if that survived) with the next message."""
        ws_id = ws["id"]
        interrupted = ws["state"] in BUSY_STATES
        await self._resolve_approvals(ws_id, "the spoke lost the workstream")
        await self.db.update(ws_id, detached=1)
        note = (f"{why}{' during a turn, which was interrupted' if interrupted else ''}; the "
                "conversation continues from the hub's transcript with the next message")
        await self._append(ws_id, "notice", {"message": note})
        if await self.db.inbox_pending(ws_id):
            await self._set_state(ws_id, "queued")
            self.kick()
        elif ws["state"] != "idle" and ws["state"] != "error":
            await self._set_state(ws_id, "idle")

    async def _spoke_connected(self, link: SpokeLink) -> None:
        info = await link.call(v.SPOKE_INFO, v.Empty())
        running = set(info.workstreams)
        for ws in await self.db.on_spoke(link.name):
            ws_id = ws["id"]
            if ws_id in self._leasing or ws["state"] == "queued":
                continue
            if ws_id not in running:
                if not ws["detached"]:
                    await self._detach(ws, f"spoke {link.name} restarted")
                continue
            await self._deliver_pending(ws_id)
            for approval in await self.db.approvals_undelivered(ws_id):
                await self._deliver_approval(link.name, ws_id, approval["call_id"],
                                             approval["state"] == "approved", approval["reason"])
        closed = {w["id"] for w in await self.db.in_state("closed")}
        for ws_id in running & closed:
            await link.call(v.WS_CLOSE, v.WsRef(ws_id=ws_id))
        self.kick()

    async def _spoke_disconnected(self, link: SpokeLink) -> None:
        self.kick()
