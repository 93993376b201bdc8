"""Leasing workstreams to spokes, delivering what waits, and recovering from lost spokes.

The scheduler (woken by :meth:`Leasing.kick` on every change, and every 2 s) leases queued
workstreams to the spoke :mod:`hub.workstreams.routing` picks, hands undelivered messages to
their spoke when it has a free slot, and, when a spoke comes back without a workstream's agent
(it restarted), *detaches* it: the next message resumes it from the hub's log
(protocol/transcript.py), in its old box when that survived. A lease the spoke refuses goes
back to the queue, and is not offered to that spoke again for a while (injected clock).
Pinned by tests/hub/test_workstreams_memory.py (in memory) and tests/test_ws_capacity.py.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hub.model_config import ModelsConfig
from hub.registry import Registry
from hub.spoke_calls import SpokeCalls
from hub.spoke_link import SpokeLink
from hub.store import Store
from hub.workstreams import routing
from hub.workstreams.journal import BUSY_STATES, Journal
from protocol import transcript
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import new_id
from protocol.verbs import P, R, Verb

log = logging.getLogger("spokehub.hub.workstreams")


async def _nothing() -> None:
    return None


class Leasing:
    def __init__(self, store: Store, registry: Registry, journal: Journal,
                 models: Callable[[], ModelsConfig], *,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_pass: Callable[[], Awaitable[None]] = _nothing) -> None:
        self.store, self.registry, self.journal, self.models = store, registry, journal, models
        self.monotonic = monotonic
        self.on_pass = on_pass  # run on every scheduling pass (the approval deadlines)
        self._kick = asyncio.Event()
        self._leasing: set[str] = set()
        self._refused: dict[tuple[str, str], float] = {}  # (ws, spoke) -> until
        self._task: asyncio.Task[None] | None = None
        # Whether this hub leases queued work: the cluster node's leader lease (hub/cluster/node.py,
        # set in hub/app.py); a hub alone always does.
        self.is_leader: Callable[[], bool] = lambda: True
        # Tells the leader to schedule (a ``kick`` wake-up, hub/app.py) when this hub is not it.
        self.on_kick: Callable[[], None] = lambda: None
        self._stopping = False
        # Whether a workstream's spoke has been away past the grace (set by moves.Moves).
        self.gone: Callable[[str], bool] = lambda spoke: False
        registry.on_connected.append(self._spoke_connected)
        registry.on_disconnected.append(self._spoke_disconnected)

    def start(self) -> None:
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
        """Run a scheduling pass now (here; and on the leader, through :attr:`on_kick`, when
        this hub is not it)."""
        self._kick.set()
        if not self.is_leader():
            self.on_kick()

    def wake(self) -> None:
        """A ``kick`` wake-up from another hub: a pass here, not told onwards."""
        self._kick.set()

    def leasing_now(self) -> frozenset[str]:
        """Workstreams being leased at this moment (their lease decides where they run)."""
        return frozenset(self._leasing)

    async def _scheduler(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), 2.0)
            self._kick.clear()
            try:
                await self.on_pass()
                if self.is_leader():  # one dispatcher for the cluster (hub/cluster/node.py)
                    await self._schedule_once()
            except Exception:  # the scheduler must outlive any one bad row
                log.exception("scheduling pass failed")

    async def _schedule_once(self) -> None:
        """Lease queued workstreams to spokes; deliver messages that waited for a slot."""
        for ws_id in await self.journal.db.with_undelivered_messages():
            if ws_id not in self._leasing:
                await self.deliver_pending(ws_id)
        queued = [w for w in await self.journal.db.in_state("queued") if w["id"] not in self._leasing]
        if not queued:
            return
        counts = await self.journal.db.busy_counts()
        now = self.monotonic()
        hub_models = frozenset(self.models().models)
        candidates = [routing.Candidate(link.name, tuple(link.labels), tuple(link.models),
                                        link.max_workstreams)
                      for link in self.registry.live_links() if not link.leaving]
        for ws in queued:
            refused = frozenset(name for (ws_id, name), until in self._refused.items()
                                if ws_id == ws["id"] and until > now)
            want = routing.Want(spoke=ws["spoke"] or ws["want_spoke"], label=ws["want_label"],
                                   model=ws["model"], hub_models=hub_models)
            name, why = routing.pick(want, candidates, counts, refused)
            if name is None:
                await self.journal.set_waiting(ws["id"], why)
                continue
            counts[name] = counts.get(name, 0) + 1
            self._leasing.add(ws["id"])
            asyncio.get_running_loop().create_task(self._lease(ws, self.registry.link(name)))

    def _model_refs(self, alias: str, link: SpokeCalls) -> builtins.list[v.ModelRef]:
        config = self.models()
        refs: builtins.list[v.ModelRef] = []
        if alias in link.models:
            refs.append(v.ModelRef(alias=alias, provider="openai", via="spoke"))
        for m in config.chain(alias):
            refs.append(v.ModelRef(alias=m.alias, provider=m.provider, via="hub",
                                   context_window=m.context_window))
        return refs

    async def _history(self, ws_id: str, pending: int) -> builtins.list[dict[str, Any]]:
        """The conversation before the ``pending`` undelivered messages, from the log."""
        events: builtins.list[dict[str, Any]] = []
        while page := await self.journal.db.events(ws_id, events[-1]["seq"] if events else 0, 5000):
            events.extend(page)
        users = [e["seq"] for e in events if e["kind"] == "user_message"]
        cut = users[-pending] if 0 < pending <= len(users) else (events[-1]["seq"] + 1 if events else 0)
        return transcript.bounded(transcript.from_events([e for e in events if e["seq"] < cut]))

    async def _lease(self, ws: dict[str, Any], link: SpokeCalls) -> None:
        """Start (or resume, from the transcript) the agent of ``ws`` on ``link``'s spoke."""
        ws_id = ws["id"]
        try:
            pending = await self.journal.db.inbox_pending(ws_id)
            resume_turn = bool(ws["resume_turn"]) and not pending
            if not pending and not resume_turn:
                await self.journal.set_state(ws_id, "idle")
                return
            box_id = ws["box_id"] or new_id("bx")
            leased_at = self.store.clock()
            history = await self._history(ws_id, len(pending))
            if resume_turn and not history:
                await self.journal.db.update(ws_id, resume_turn=0)
                await self.journal.set_state(ws_id, "idle")
                return
            # From here on the spoke's events for it count (the fence in WorkstreamService's
            # _ingest): its first ones may arrive before ws.start's answer is handled.
            await self.journal.db.update(ws_id, spoke=link.name, state="starting", box_id=box_id,
                                         waiting="", detached=0)
            await self.journal.append(ws_id, "assigned", {"spoke": link.name, **({"resumed": True} if history else {})})
            box_row = await self.store.get_box(box_id)
            if box_row is None:
                await self.store.add_box(box_id, link.name, ws["image"] or "", {"workstream": ws_id})
            try:
                with v.validating(v.WS_START):
                    start = v.WsStart(
                        ws_id=ws_id, box_id=box_id,
                        message="" if resume_turn else pending[0]["message"],
                        models=self._model_refs(ws["model"], link), image=ws["image"],
                        auto_approve=bool(ws["auto_approve"]), seq_base=ws["spoke_seq"],
                        history=history, continue_turn=resume_turn)
                started = await link.call(v.WS_START, start)
            except RemoteError as err:
                await self._lease_failed(ws, link, box_id, box_row is None, err)
                return
            await self.store.set_box_state(box_id, "running")
            await self.store.db_update_box_image(box_id, started.image)
            await self.store.run_started(ws_id, link.name, box_id, leased_at)  # a new run (attempt)
            if resume_turn:
                await self.journal.db.update(ws_id, resume_turn=0)
            else:
                await self.journal.db.inbox_delivered(pending[0]["id"])
            for extra in pending[1:]:
                await link.call(v.WS_SEND, v.WsSend(ws_id=ws_id, message=extra["message"]))
                await self.journal.db.inbox_delivered(extra["id"])
        finally:
            self._leasing.discard(ws_id)
            self.kick()

    async def _lease_failed(self, ws: dict[str, Any], link: SpokeCalls, box_id: str, new_box: bool,
                            err: RemoteError) -> None:
        ws_id = ws["id"]
        if new_box:
            await self.store.set_box_state(box_id, "failed")
        if ws["want_spoke"] and err.code in (ErrorCode.DENIED, ErrorCode.INVALID):
            # The one spoke it may run on refuses it by policy: waiting cannot help.
            message = f"spoke {link.name} refused it: {err.message}"
            await self.journal.db.update(ws_id, box_id="" if new_box else box_id, spoke=None if new_box else link.name)
            await self.journal.append(ws_id, "error", {"message": message})
            await self.journal.db.update(ws_id, error=message[:2000])
            await self.journal.set_state(ws_id, "error")
            await self.store.audit("ws.error", ws_id, message)
            return
        self._refused[(ws_id, link.name)] = self.monotonic() + (5.0 if err.code is ErrorCode.BUSY else 30.0)
        keep = ws["spoke"] if ws["detached"] else None  # a resumed one waits for its box's spoke
        await self.journal.db.update(ws_id, spoke=keep, state="queued", box_id="" if new_box else box_id,
                                     detached=ws["detached"])
        await self.journal.append(ws_id, "lease_returned", {"spoke": link.name, "reason": str(err)})

    async def deliver_pending(self, ws_id: str) -> None:
        """Hand undelivered messages to the workstream's spoke, or say why they wait."""
        ws = await self.journal.db.get(ws_id)
        if ws is None or ws["state"] in ("queued", "starting", "closed") or ws_id in self._leasing:
            return  # a lease delivers the queue itself
        pending = await self.journal.db.inbox_pending(ws_id)
        if not pending:
            return
        if not ws["spoke"] and not ws["detached"]:
            return  # never started (refused by its spoke): send() refuses more messages
        if ws["detached"]:
            await self.journal.set_state(ws_id, "queued")  # its agent must be (re)started first
            self.kick()
            return
        link = self.registry.live(ws["spoke"])
        if link is None:
            if not ws["want_spoke"] and self.gone(ws["spoke"]):  # generic: go on elsewhere
                await self.detach(ws, f"spoke {ws['spoke']} is gone", busy=False, move=True)
                return
            await self.journal.set_waiting(ws_id, f"waiting: spoke {ws['spoke']} is not connected")
            return
        for message in pending:
            try:
                await link.call(v.WS_SEND, v.WsSend(ws_id=ws_id, message=message["message"]))
            except RemoteError as err:
                if err.code is ErrorCode.NOT_FOUND:  # the spoke lost it since it last said
                    await self.detach(ws, f"spoke {link.name} no longer runs it")
                elif err.code is ErrorCode.BUSY:
                    await self.journal.set_waiting(ws_id, f"waiting: spoke {link.name} has no free slot ({err.message})")
                else:
                    log.info("message for %s not delivered yet: %s", ws_id, err)
                return
            await self.journal.db.inbox_delivered(message["id"])
        await self.journal.set_waiting(ws_id, "")

    async def detach(self, ws: dict[str, Any], why: str, *, busy: bool | None = None,
                     move: bool = False) -> None:
        """The spoke lost this workstream's agent: keep everything at the hub and resume it
        from the transcript (in its old box if that survived, or, with ``move``, on any
        suitable spoke in a new box). A turn it cut short (``busy``; default: the row's
        state says so) is continued at once when the workstream's ``on_loss`` is
        ``resume``; with ``interrupt`` it ends in ``error`` and the next message goes on.
        Pinned by tests/hub/test_workstreams_memory.py (lost, left, moved, interrupted)."""
        ws_id = ws["id"]
        interrupted = ws["state"] in BUSY_STATES if busy is None else busy
        resume = ws["on_loss"] != "interrupt"
        await self.store.run_ended(ws_id, "lost", why)  # a resume is a new run
        await self.journal.resolve_approvals(ws_id, "the spoke lost the workstream")
        fields: dict[str, Any] = {"detached": 1, "resume_turn": int(interrupted and resume)}
        if move:
            if ws["box_id"]:  # left on the lost spoke: reaped when it comes back
                await self.store.set_box_state(ws["box_id"], "lost")
            fields.update(spoke=None, box_id="")
        await self.journal.db.update(ws_id, **fields)
        where = "on another spoke, in a new box" if move else "from the hub's transcript"
        if interrupted and resume:
            note = f"{why} during a turn: the turn continues {where}"
        elif interrupted:
            note = f"{why}: the turn was interrupted; send a message to go on {where}"
        else:
            note = f"{why}; the conversation continues {where} with the next message"
        await self.journal.append(ws_id, "notice", {"message": note})
        if interrupted and not resume:
            await self.journal.set_state(ws_id, "error", note[:2000])
        elif interrupted or await self.journal.db.inbox_pending(ws_id):
            await self.journal.set_state(ws_id, "queued")
            self.kick()
        elif ws["state"] != "idle" and ws["state"] != "error":
            await self.journal.set_state(ws_id, "idle")

    async def _spoke_connected(self, link: SpokeLink) -> None:
        info = await link.call(v.SPOKE_INFO, v.Empty())
        running = set(info.workstreams)
        for ws in await self.journal.db.on_spoke(link.name):
            ws_id = ws["id"]
            if ws_id in self._leasing or ws["state"] == "queued":
                continue
            if ws_id not in running:
                if not ws["detached"]:
                    await self.detach(ws, f"spoke {link.name} restarted")
                continue
            await self.deliver_pending(ws_id)
            for approval in await self.journal.db.approvals_undelivered(ws_id):
                await self.deliver_approval(link.name, ws_id, approval["call_id"],
                                             approval["state"] == "approved", approval["reason"])
        for ws_id in running:
            # An agent the hub no longer counts on (closed meanwhile, moved to another spoke, or
            # handed back) is ended here; its events were fenced off (service._ingest).
            row = await self.journal.db.get(ws_id)
            if row is None or row["state"] == "closed" or row["spoke"] != link.name or row["detached"]:
                await link.call(v.WS_CLOSE, v.WsRef(ws_id=ws_id))
        self.kick()

    async def _spoke_disconnected(self, link: SpokeLink) -> None:
        self.kick()

    async def tell(self, spoke: str | None, verb: Verb[P, R], params: P) -> R | None:
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

    async def deliver_approval(self, spoke: str | None, ws_id: str, call_id: str, approve: bool, reason: str) -> None:
        decision = v.WsApprove(ws_id=ws_id, call_id=call_id, approved=approve, reason=reason)
        if await self.tell(spoke, v.WS_APPROVE, decision) is not None:
            await self.journal.db.approval_delivered(ws_id, call_id)

