"""A workstream's append-only log, and the row fields every part of the service updates.

Everything that happens to a workstream is an event here first (hub/workstreams/store.py
assigns the gap-free ``seq``); readers waiting on a workstream are woken when one is added.
Shared by the public service (hub/workstreams/service.py) and the scheduler
(hub/workstreams/leasing.py). Pinned by tests/hub/test_store.py and
tests/hub/test_workstreams_memory.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from hub import metrics
from hub.workstreams.store import WorkstreamStore

SPOKE_STATES = {"idle", "thinking", "running", "attention", "error"}
BUSY_STATES = ("starting", "thinking", "running", "attention")  # what holds a spoke's slot


class Journal:
    def __init__(self, db: WorkstreamStore, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db, self.monotonic = db, monotonic
        self._waiters: dict[str, asyncio.Event] = {}

    async def append(self, ws_id: str, kind: str, data: dict[str, Any],
                     sseq: int | None = None) -> dict[str, Any] | None:
        """Record one event (None: ``sseq`` shows a re-sent duplicate) and wake its readers."""
        event = await self.db.append(ws_id, kind, data, sseq)
        if event is not None:
            metrics.WS_EVENTS.labels(kind if kind in metrics.KNOWN_EVENT_KINDS else "other").inc()
            self.wake(ws_id)
        return event

    def wake(self, ws_id: str) -> None:
        """Wake the readers of ``ws_id`` waiting here: after an append on this hub, or the
        ``ws:ID`` wake-up of one on another hub of the cluster (hub/cluster/node.py)."""
        waiter = self._waiters.pop(ws_id, None)
        if waiter is not None:
            waiter.set()

    async def set_state(self, ws_id: str, state: str, error: str | None = None) -> None:
        fields: dict[str, Any] = {"state": state}
        if error is not None:
            fields["error"] = error
        await self.db.update(ws_id, **fields)
        await self.append(ws_id, "state", {"state": state, **({"error": error} if error else {})})

    async def set_waiting(self, ws_id: str, why: str) -> None:
        """Record why a workstream waits (shown by the API and CLI); an event when it changes."""
        ws = await self.db.get(ws_id)
        if ws is None or ws["waiting"] == why:
            return
        await self.db.update(ws_id, waiting=why)
        if why:
            await self.append(ws_id, "waiting", {"reason": why})

    async def resolve_approvals(self, ws_id: str, why: str) -> None:
        """Pending approvals can no longer be answered (cancelled, closed, the agent lost)."""
        for approval in await self.db.approvals(ws_id, "pending"):
            if await self.db.approval_decide(ws_id, approval["call_id"], "resolved", why):
                await self.append(ws_id, "approval_resolved_by_hub",
                                  {"call_id": approval["call_id"], "approved": False, "reason": why})

    async def wait_events(self, ws_id: str, after: int, timeout: float) -> list[dict[str, Any]]:
        """Events after ``after``, waiting up to ``timeout`` s for the first one."""
        deadline = self.monotonic() + timeout
        while True:
            waiter = self._waiters.setdefault(ws_id, asyncio.Event())
            found = await self.db.events(ws_id, after)
            remaining = deadline - self.monotonic()
            if found or remaining <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)
