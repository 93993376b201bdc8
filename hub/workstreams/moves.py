"""Work that survives a lost spoke: workstreams moved, continued or marked interrupted.

When a spoke goes without a goodbye (crash, power, network), the hub waits ``grace_s``
(a blip reconnects well within it, its agents still running) and then lets go of the spoke's
workstreams that were in a turn, each as its ``on_loss`` says (an idle one keeps its box there
and moves only when a message comes for it after the grace: Leasing.deliver_pending):

- ``resume`` (the default): generic and label-routed work moves — the scheduler leases it to
  another suitable spoke, in a new box, and a turn the loss cut short is *continued* from the
  hub's transcript (``ws.start`` with ``continue_turn``: the tool call that was running is
  answered as interrupted, never re-run silently); with no spoke free it waits in the queue.
  Work directed at that one spoke cannot move: it waits for the spoke, and its turn continues
  when the spoke is back.
- ``interrupt``: the workstream ends its turn in ``error`` ("interrupted: …"); the next
  message resumes it from the transcript.

A spoke stopping cleanly says ``spoke.leaving`` first (protocol/messages.py): its
workstreams are handed back at once, with no grace, the same way. The old spoke's box of a
moved workstream is recorded ``lost`` and reaped when that spoke reconnects; an agent it still
runs is closed then (Leasing._spoke_connected), and its events are fenced off meanwhile
(WorkstreamService._ingest). Pinned by tests/hub/test_workstreams_memory.py and
tests/test_work_survives.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from hub.registry import Registry
from hub.spoke_link import SpokeLink
from hub.workstreams.journal import BUSY_STATES, Journal
from hub.workstreams.leasing import Leasing
from protocol import messages
from protocol import verbs as v

log = logging.getLogger("spokehub.hub.workstreams")
ON_LOSS = ("resume", "interrupt")


class Moves:
    def __init__(self, registry: Registry, journal: Journal, leasing: Leasing, *,
                 grace_s: float = 15.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.journal, self.leasing = registry, journal, leasing
        self.grace_s, self.monotonic = grace_s, monotonic
        self._lost: dict[str, float] = {}  # spoke -> when it was lost (monotonic)
        self._leaving: set[str] = set()  # spokes that said spoke.leaving on their link
        self._tasks: set[asyncio.Task[None]] = set()
        self._released: dict[str, float] = {}  # lost spokes whose busy work was let go
        self._started = monotonic()
        leasing.gone = self.gone
        registry.on_disconnected.append(self._disconnected)
        registry.on_connected.append(self._connected)
        registry.on_notification["spoke.leaving"] = self._leaving_notice

    def lost_since(self, spoke: str) -> float | None:
        """When ``spoke`` was lost (monotonic), while its workstreams wait out the grace."""
        return self._lost.get(spoke)

    async def _connected(self, link: SpokeLink) -> None:
        self._lost.pop(link.name, None)
        self._released.pop(link.name, None)
        self._leaving.discard(link.name)

    async def _disconnected(self, link: SpokeLink) -> None:
        if link.name in self._leaving:
            # Its busy work was handed back when it said it was leaving; idle ones keep their
            # box there and move only if a message comes after the grace (Leasing.deliver_pending).
            self._lost[link.name] = self.monotonic()
            return
        if link.gone_state() == "lost":
            self._lost[link.name] = self.monotonic()
            self.leasing.kick()
        else:  # a goodbye without spoke.leaving (an older spoke): nothing runs there now
            await self.release(link.name, f"spoke {link.name} left", busy=None, leaving=True)

    async def spokes_lost(self, names: list[str]) -> None:
        """Spokes lost with the hub that held their links (the leader's sweep of dead hubs,
        hub/cluster/node.py): the same grace as a link lost here. Pinned by
        tests/test_multihub.py."""
        now = self.monotonic()
        for name in names:
            if self.registry.live(name) is None:
                self._lost.setdefault(name, now)
        self.leasing.kick()

    async def _leaving_notice(self, link: SpokeLink, params: BaseModel) -> None:
        assert isinstance(params, messages.SpokeLeaving)
        self._leaving.add(link.name)
        link.leaving = True  # routing offers it nothing more
        await self.registry.store.holder_leaving(link.name, self.registry.hub_id)  # other hubs too
        interrupted = set(params.interrupted)
        log.info("spoke %s is leaving: handing back its workstreams", link.name)
        moved = await self.release(link.name, f"spoke {link.name} left", busy=interrupted,
                                   leaving=True)
        if moved:  # their agents and boxes go now, during the spoke's drain; in a task of its
            # own: this runs in the link's reader, which must go on reading the answers
            task = asyncio.get_running_loop().create_task(self._close_moved(link.name, moved))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _close_moved(self, spoke: str, moved: list[str]) -> None:
        for ws_id in moved:
            await self.leasing.tell(spoke, v.WS_CLOSE, v.WsRef(ws_id=ws_id))

    def gone(self, spoke: str) -> bool:
        """Whether ``spoke`` has been away longer than the grace (counted from the hub's
        start when it was already away then): an idle workstream of it moves when a message
        comes. Before that, the message waits for the spoke, and the box's files with it."""
        if self.registry.live(spoke) is not None:
            return False
        since = self._lost.get(spoke, self._started)
        return self.monotonic() - since >= self.grace_s

    async def on_pass(self) -> None:
        """Every scheduling pass: let go of the busy work of spokes lost past the grace."""
        now = self.monotonic()
        for name, since in list(self._lost.items()):
            if self.registry.live(name) is not None:
                del self._lost[name]
                self._released.pop(name, None)
            elif now - since >= self.grace_s and name not in self._released:
                self._released[name] = since
                await self.release(name, f"spoke {name} was lost", busy=None, leaving=False)

    async def release(self, spoke: str, why: str, *, busy: set[str] | None,
                      leaving: bool) -> list[str]:
        """Let go of every open workstream on ``spoke`` (see the module docstring); returns
        the ids that moved away from it. ``busy``: the ids whose turn was cut short (None:
        the rows' states tell); ``leaving``: the spoke stopped its agents itself."""
        moved: list[str] = []
        for ws in await self.journal.db.on_spoke(spoke):
            if ws["id"] in self.leasing.leasing_now() or ws["detached"]:
                continue
            was_busy = ws["state"] in BUSY_STATES if busy is None else ws["id"] in busy
            if not was_busy:
                continue  # nothing runs: it keeps its box there; a message moves it later
            if await self._release_one(ws, why, was_busy, leaving):
                moved.append(ws["id"])
        if moved:
            self.leasing.kick()
        return moved

    async def _release_one(self, ws: dict[str, Any], why: str, busy: bool, leaving: bool) -> bool:
        directed = bool(ws["want_spoke"])
        if directed and ws["on_loss"] != "interrupt":
            # It can run only there: it waits for its spoke. A lost spoke may come back with
            # the agent still running (a partition): reconnecting sorts that out (detached then
            # if its agent is gone, Leasing._spoke_connected). One that left stopped its agents:
            # the turn it cut short continues when the spoke is back.
            if leaving and busy:
                await self.leasing.detach(ws, why, busy=True)
            if busy or leaving:
                await self.journal.set_waiting(ws["id"], f"waiting: {why}; it runs only there")
            return False
        await self.leasing.detach(ws, why, busy=busy, move=not directed)
        return not directed
