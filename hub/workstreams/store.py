"""Workstream persistence: rows, the append-only event log, inbox, approvals, usage.

The event log is the source of truth every reader resumes from. The hub alone assigns its
sequence numbers (spoke events carry their own ``sseq``, used only to drop re-sent duplicates),
so events the hub itself records (queued, approvals decided, closed) interleave safely.
"""

from __future__ import annotations

import json
from typing import Any

from hub.store import Store

OPEN_STATES = ("queued", "starting", "idle", "thinking", "running", "attention", "error")


class WorkstreamStore:
    def __init__(self, store: Store) -> None:
        self.s = store

    async def create(self, row: dict[str, Any]) -> None:
        now = self.s.clock()
        full = {"created_at": now, "updated_at": now, **row}
        await self.s._run(lambda: self.s.db.table("workstreams").insert(full))

    async def get(self, ws_id: str) -> dict[str, Any] | None:
        return await self.s._run(lambda: self.s._one("SELECT * FROM workstreams WHERE id=?", (ws_id,)))

    async def recent(self, limit: int = 500) -> list[dict[str, Any]]:
        return await self.s._run(lambda: self.s._rows(
            "SELECT * FROM workstreams ORDER BY created_at DESC LIMIT ?", (limit,)))

    async def in_state(self, *states: str) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in states)
        return await self.s._run(lambda: self.s._rows(
            f"SELECT * FROM workstreams WHERE state IN ({marks}) ORDER BY created_at", tuple(states)))

    async def on_spoke(self, spoke: str) -> list[dict[str, Any]]:
        return await self.s._run(lambda: self.s._rows(
            "SELECT * FROM workstreams WHERE spoke=? AND state!='closed'", (spoke,)))

    async def busy_counts(self) -> dict[str, int]:
        """Busy workstreams per spoke: what its capacity counts (idle ones hold no slot)."""
        rows = await self.s._run(lambda: self.s._rows(
            "SELECT spoke, count(*) AS n FROM workstreams WHERE spoke IS NOT NULL AND state IN "
            "('starting','thinking','running','attention') GROUP BY spoke"))
        return {r["spoke"]: r["n"] for r in rows}

    async def with_undelivered_messages(self) -> list[str]:
        """Open workstreams holding messages not yet handed to a spoke."""
        rows = await self.s._run(lambda: self.s._rows(
            "SELECT DISTINCT i.ws_id FROM ws_inbox i JOIN workstreams w ON w.id=i.ws_id "
            "WHERE i.delivered_at IS NULL AND w.state NOT IN ('queued','starting','closed')"))
        return [r["ws_id"] for r in rows]

    async def update(self, ws_id: str, **fields: Any) -> None:
        fields["updated_at"] = self.s.clock()
        await self.s._run(lambda: self.s.db.table("workstreams").update(ws_id, fields))

    async def append(self, ws_id: str, kind: str, data: dict[str, Any], sseq: int | None = None) -> dict[str, Any] | None:
        """Append one event; returns it, or None when ``sseq`` shows a re-sent duplicate."""
        def run() -> dict[str, Any] | None:
            conn = self.s.db.conn
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute("SELECT last_seq, spoke_seq FROM workstreams WHERE id=?", (ws_id,)).fetchone()
                if row is None:
                    return None
                last_seq, spoke_seq = row
                if sseq is not None and sseq <= spoke_seq:
                    return None
                seq, now = last_seq + 1, self.s.clock()
                conn.execute("INSERT INTO ws_events (ws_id, seq, ts, kind, data) VALUES (?,?,?,?,?)",
                             (ws_id, seq, now, kind, json.dumps(data)))
                conn.execute("UPDATE workstreams SET last_seq=?, spoke_seq=?, updated_at=? WHERE id=?",
                             (seq, sseq if sseq is not None else spoke_seq, now, ws_id))
                return {"seq": seq, "ts": now, "kind": kind, "data": data}
        return await self.s._run(run)

    async def events(self, ws_id: str, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        rows = await self.s._run(lambda: self.s._rows(
            "SELECT seq, ts, kind, data FROM ws_events WHERE ws_id=? AND seq>? ORDER BY seq LIMIT ?",
            (ws_id, after, limit)))
        for row in rows:
            row["data"] = json.loads(row["data"])
        return rows

    async def last_user_seq(self, ws_id: str) -> int:
        """The seq of the latest user message (0 before any): where the current turn starts."""
        row = await self.s._run(lambda: self.s._one(
            "SELECT max(seq) AS seq FROM ws_events WHERE ws_id=? AND kind='user_message'", (ws_id,)))
        return int(row["seq"] or 0) if row else 0

    # ----------------------------------------------------------------- inbox
    async def inbox_add(self, ws_id: str, message: str) -> int:
        def run() -> int:
            cur = self.s.db.execute("INSERT INTO ws_inbox (ws_id, message, created_at) VALUES (?,?,?)",
                                    (ws_id, message, self.s.clock()))
            return int(cur.lastrowid or 0)
        return await self.s._run(run)

    async def inbox_pending(self, ws_id: str) -> list[dict[str, Any]]:
        return await self.s._run(lambda: self.s._rows(
            "SELECT * FROM ws_inbox WHERE ws_id=? AND delivered_at IS NULL ORDER BY id", (ws_id,)))

    async def inbox_delivered(self, message_id: int) -> None:
        await self.s._run(lambda: self.s._exec(
            "UPDATE ws_inbox SET delivered_at=? WHERE id=?", (self.s.clock(), message_id)))

    # ------------------------------------------------------------- approvals
    async def approval_add(self, ws_id: str, call_id: str, tool: str, args: Any) -> None:
        row = {"ws_id": ws_id, "call_id": call_id, "tool": tool, "args": json.dumps(args),
               "state": "pending", "created_at": self.s.clock(), "decided_at": None, "reason": "", "delivered": 0}
        await self.s._run(lambda: self.s.db.table("approvals").upsert(row, pk=("ws_id", "call_id")))

    async def approvals_pending_before(self, ts: float) -> list[dict[str, Any]]:
        return await self.s._run(lambda: self.s._rows(
            "SELECT ws_id, call_id FROM approvals WHERE state='pending' AND created_at<? ORDER BY created_at",
            (ts,)))

    async def approval_get(self, ws_id: str, call_id: str) -> dict[str, Any] | None:
        return await self.s._run(lambda: self.s._one(
            "SELECT * FROM approvals WHERE ws_id=? AND call_id=?", (ws_id, call_id)))

    async def approvals(self, ws_id: str, state: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM approvals WHERE ws_id=?" + (" AND state=?" if state else "") + " ORDER BY created_at"
        rows = await self.s._run(lambda: self.s._rows(sql, (ws_id, state) if state else (ws_id,)))
        for row in rows:
            row["args"] = json.loads(row["args"])
        return rows

    async def approval_decide(self, ws_id: str, call_id: str, state: str, reason: str) -> bool:
        return await self.s._run(lambda: self.s._exec(
            "UPDATE approvals SET state=?, reason=?, decided_at=? WHERE ws_id=? AND call_id=? AND state='pending'",
            (state, reason, self.s.clock(), ws_id, call_id))) == 1

    async def approval_delivered(self, ws_id: str, call_id: str) -> None:
        await self.s._run(lambda: self.s._exec(
            "UPDATE approvals SET delivered=1 WHERE ws_id=? AND call_id=?", (ws_id, call_id)))

    async def approvals_undelivered(self, ws_id: str) -> list[dict[str, Any]]:
        return await self.s._run(lambda: self.s._rows(
            "SELECT * FROM approvals WHERE ws_id=? AND state IN ('approved','denied') AND delivered=0", (ws_id,)))

    # ----------------------------------------------------------------- usage
    async def usage_add(self, ws_id: str, spoke: str, model: str, tokens_in: int, tokens_out: int) -> None:
        def run() -> None:
            self.s.db.execute(
                "INSERT INTO usage (ts, ws_id, spoke, model, input_tokens, output_tokens) VALUES (?,?,?,?,?,?)",
                (self.s.clock(), ws_id, spoke, model, tokens_in, tokens_out))
            self.s.db.execute(
                "UPDATE workstreams SET input_tokens=input_tokens+?, output_tokens=output_tokens+? WHERE id=?",
                (tokens_in, tokens_out, ws_id))
        await self.s._run(run)

    async def usage_by_spoke(self) -> list[dict[str, Any]]:
        return await self.s._run(lambda: self.s._rows(
            "SELECT spoke, model, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
            "count(*) AS calls FROM usage GROUP BY spoke, model ORDER BY spoke, model"))
