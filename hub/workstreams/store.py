"""Workstream persistence: rows, the append-only event log, inbox, approvals, usage.

The event log is the source of truth every reader resumes from. The hub alone assigns its
sequence numbers (spoke events carry their own ``sseq``, used only to drop re-sent duplicates),
so events the hub itself records (queued, approvals decided, closed) interleave safely.

Everything goes through the store's public transaction API (:meth:`Store.transaction`,
:meth:`Store.read`) with portable SQL, so any store engine serves it. Pinned end to end by
tests/test_workstreams_e2e.py and tests/test_ws_capacity.py, and without processes by
tests/hub/test_store.py (gap-free seq under concurrent appends, duplicate ``sseq`` dropped).
"""

from __future__ import annotations

import json
from typing import Any

from hub.store import Store, Tx

OPEN_STATES = ("queued", "starting", "idle", "thinking", "running", "attention", "error")
BUSY_STATES = ("starting", "thinking", "running", "attention")  # what holds a spoke's slot


def _marks(values: tuple[str, ...]) -> str:
    return ", ".join("?" for _ in values)


class WorkstreamStore:
    def __init__(self, store: Store) -> None:
        self.s = store

    async def create(self, row: dict[str, Any]) -> None:
        now = self.s.clock()
        full = {"created_at": now, "updated_at": now, **row}
        await self.s.transaction(lambda tx: tx.insert("workstreams", full))

    async def get(self, ws_id: str) -> dict[str, Any] | None:
        return await self.s.read(lambda r: r.one("SELECT * FROM workstreams WHERE id=?", (ws_id,)))

    async def recent(self, limit: int = 500) -> list[dict[str, Any]]:
        """The newest workstreams, each with ``pending_count``: its tool calls waiting for
        approval (one query; the dashboard's "Approvals" column)."""
        sql = ("SELECT w.*, (SELECT count(*) FROM approvals a WHERE a.ws_id = w.id AND "
               "a.state = 'pending') AS pending_count FROM workstreams w "
               "ORDER BY w.created_at DESC LIMIT ?")
        return await self.s.read(lambda r: r.rows(sql, (limit,)))

    async def in_state(self, *states: str) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM workstreams WHERE state IN ({_marks(states)}) ORDER BY created_at"
        return await self.s.read(lambda r: r.rows(sql, states))

    async def on_spoke(self, spoke: str) -> list[dict[str, Any]]:
        sql = "SELECT * FROM workstreams WHERE spoke=? AND state<>'closed'"
        return await self.s.read(lambda r: r.rows(sql, (spoke,)))

    async def busy_counts(self) -> dict[str, int]:
        """Busy workstreams per spoke: what its capacity counts (idle ones hold no slot).
        Pinned by tests/test_ws_capacity.py::test_finished_workstreams_hold_no_slot."""
        sql = (
            "SELECT spoke, count(*) AS n FROM workstreams WHERE spoke IS NOT NULL AND state IN "
            f"({_marks(BUSY_STATES)}) GROUP BY spoke"
        )
        rows = await self.s.read(lambda r: r.rows(sql, BUSY_STATES))
        return {r["spoke"]: r["n"] for r in rows}

    async def with_undelivered_messages(self) -> list[str]:
        """Open workstreams holding messages not yet handed to a spoke."""
        sql = (
            "SELECT DISTINCT i.ws_id FROM ws_inbox i JOIN workstreams w ON w.id=i.ws_id "
            "WHERE i.delivered_at IS NULL AND w.state NOT IN ('queued','starting','closed')"
        )
        rows = await self.s.read(lambda r: r.rows(sql))
        return [r["ws_id"] for r in rows]

    async def update(self, ws_id: str, **fields: Any) -> None:
        fields["updated_at"] = self.s.clock()

        def run(tx: Tx) -> None:
            tx.update("workstreams", "id", ws_id, fields)

        await self.s.transaction(run)

    async def append(self, ws_id: str, kind: str, data: dict[str, Any], sseq: int | None = None) -> dict[str, Any] | None:
        """Append one event; returns it, or None when ``sseq`` shows a re-sent duplicate (or
        there is no such workstream). Seq numbers are gap-free: read and bumped in one
        transaction. Pinned by tests/hub/test_store.py::test_append_keeps_seq_gap_free_under_concurrent_appends."""
        encoded = json.dumps(data)

        def run(tx: Tx) -> dict[str, Any] | None:
            row = tx.one("SELECT last_seq, spoke_seq FROM workstreams WHERE id=?", (ws_id,))
            if row is None:
                return None
            last_seq, spoke_seq = row["last_seq"], row["spoke_seq"]
            if sseq is not None and sseq <= spoke_seq:
                return None
            seq, now = last_seq + 1, self.s.clock()
            tx.insert("ws_events", {"ws_id": ws_id, "seq": seq, "ts": now, "kind": kind, "data": encoded})
            tx.update("workstreams", "id", ws_id, {
                "last_seq": seq, "spoke_seq": sseq if sseq is not None else spoke_seq, "updated_at": now})
            tx.notify(f"ws:{ws_id}")  # its readers on every hub of the cluster wake up
            return {"seq": seq, "ts": now, "kind": kind, "data": data}

        return await self.s.transaction(run)

    async def events(self, ws_id: str, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        sql = "SELECT seq, ts, kind, data FROM ws_events WHERE ws_id=? AND seq>? ORDER BY seq LIMIT ?"
        rows = await self.s.read(lambda r: r.rows(sql, (ws_id, after, limit)))
        for row in rows:
            row["data"] = json.loads(row["data"])
        return rows

    async def last_user_seq(self, ws_id: str) -> int:
        """The seq of the latest user message (0 before any): where the current turn starts."""
        sql = "SELECT max(seq) AS seq FROM ws_events WHERE ws_id=? AND kind='user_message'"
        row = await self.s.read(lambda r: r.one(sql, (ws_id,)))
        return int(row["seq"] or 0) if row else 0

    # ----------------------------------------------------------------- inbox
    async def inbox_add(self, ws_id: str, message: str) -> int:
        row = {"ws_id": ws_id, "message": message, "created_at": self.s.clock()}
        return await self.s.transaction(lambda tx: tx.insert("ws_inbox", row))

    async def inbox_pending(self, ws_id: str) -> list[dict[str, Any]]:
        sql = "SELECT * FROM ws_inbox WHERE ws_id=? AND delivered_at IS NULL ORDER BY id"
        return await self.s.read(lambda r: r.rows(sql, (ws_id,)))

    async def inbox_delivered(self, message_id: int) -> None:
        now = self.s.clock()

        def run(tx: Tx) -> None:
            tx.update("ws_inbox", "id", message_id, {"delivered_at": now})

        await self.s.transaction(run)

    # ------------------------------------------------------------- approvals
    async def approval_add(self, ws_id: str, call_id: str, tool: str, args: Any) -> None:
        row = {"ws_id": ws_id, "call_id": call_id, "tool": tool, "args": json.dumps(args),
               "state": "pending", "created_at": self.s.clock(), "decided_at": None, "reason": "", "delivered": 0}

        def run(tx: Tx) -> None:
            tx.upsert("approvals", row, ("ws_id", "call_id"))

        await self.s.transaction(run)

    async def approvals_pending_before(self, ts: float) -> list[dict[str, Any]]:
        sql = "SELECT ws_id, call_id FROM approvals WHERE state='pending' AND created_at<? ORDER BY created_at"
        return await self.s.read(lambda r: r.rows(sql, (ts,)))

    async def approval_get(self, ws_id: str, call_id: str) -> dict[str, Any] | None:
        sql = "SELECT * FROM approvals WHERE ws_id=? AND call_id=?"
        return await self.s.read(lambda r: r.one(sql, (ws_id, call_id)))

    async def approvals(self, ws_id: str, state: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM approvals WHERE ws_id=?" + (" AND state=?" if state else "") + " ORDER BY created_at"
        params = (ws_id, state) if state else (ws_id,)
        rows = await self.s.read(lambda r: r.rows(sql, params))
        for row in rows:
            row["args"] = json.loads(row["args"])
        return rows

    async def approval_decide(self, ws_id: str, call_id: str, state: str, reason: str) -> bool:
        """Decide a pending approval; False if it was already decided (the first word wins).
        Pinned by tests/test_workstreams_e2e.py::test_approval_ask_then_approve_and_ask_then_deny."""
        sql = ("UPDATE approvals SET state=?, reason=?, decided_at=? "
               "WHERE ws_id=? AND call_id=? AND state='pending'")
        params = (state, reason, self.s.clock(), ws_id, call_id)
        return await self.s.transaction(lambda tx: tx.execute(sql, params)) == 1

    async def approval_delivered(self, ws_id: str, call_id: str) -> None:
        sql = "UPDATE approvals SET delivered=1 WHERE ws_id=? AND call_id=?"
        await self.s.transaction(lambda tx: tx.execute(sql, (ws_id, call_id)))

    async def approvals_undelivered(self, ws_id: str) -> list[dict[str, Any]]:
        sql = "SELECT * FROM approvals WHERE ws_id=? AND state IN ('approved','denied') AND delivered=0"
        return await self.s.read(lambda r: r.rows(sql, (ws_id,)))

    # ----------------------------------------------------------------- usage
    async def usage_add(self, ws_id: str, spoke: str, model: str, tokens_in: int, tokens_out: int) -> None:
        """Record one model call and add it to the workstream's totals, in one transaction."""
        row = {"ts": self.s.clock(), "ws_id": ws_id, "spoke": spoke, "model": model,
               "input_tokens": tokens_in, "output_tokens": tokens_out}

        def run(tx: Tx) -> None:
            tx.insert("usage", row)
            tx.execute("UPDATE workstreams SET input_tokens=input_tokens+?, output_tokens=output_tokens+? "
                       "WHERE id=?", (tokens_in, tokens_out, ws_id))

        await self.s.transaction(run)

    async def usage_by_spoke(self) -> list[dict[str, Any]]:
        sql = ("SELECT spoke, model, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
               "count(*) AS calls FROM usage GROUP BY spoke, model ORDER BY spoke, model")
        return await self.s.read(lambda r: r.rows(sql))
