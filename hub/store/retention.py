"""Retention: deleting what is older than the hub keeps, in bounded batches.

Each method deletes at most about ``batch`` rows in one transaction and returns how many went;
the janitor (hub/janitor.py) calls it again until it returns less than a full batch. The store
has one worker thread, so a prune of millions of rows in one statement would hold every
workstream event and API call behind it for seconds; in batches, whatever else is queued runs
between two of them. Every batch finds its rows through an index or the primary key (no scan
of a large table), and with portable SQL, so a PostgreSQL engine serves it unchanged.

What is pruned, each by its own retention (``hub serve`` flags, docs/operator-guide.md):
the audit log (also the events timeline), MCP jobs that ended (their output, then the job), and
the event logs, inboxes and approvals of workstreams closed for longer than a retention (the
workstream's row stays, marked ``events_pruned_at``; open workstreams are never touched). The
metrics history is pruned by :meth:`hub.store.history.HistoryTables.history_prune`, bounded too.
Pinned by tests/hub/test_janitor.py.
"""

from __future__ import annotations

from hub.store.base import StoreBase
from hub.store.engine import Tx

DEFAULT_BATCH = 1000
# Final states of an MCP job (hub/mcp/jobs.py FINAL_STATES; not imported: hub.mcp imports the store).
JOB_FINAL_STATES = ("exited", "failed", "cancelled", "timed_out", "interrupted")


class RetentionTables(StoreBase):
    """Bounded prunes over the audit, MCP job and workstream tables."""

    async def prune_audit(self, before: float, batch: int = DEFAULT_BATCH) -> int:
        """Delete up to ``batch`` of the oldest audit rows stamped before ``before``. Ids grow
        with time, so the oldest are read by the primary key and the read stops at the first
        row young enough (no index on ``ts`` needed, none to scan). Pinned by
        tests/hub/test_janitor.py::test_the_audit_log_is_pruned_in_batches."""

        def run(tx: Tx) -> int:
            rows = tx.rows("SELECT id, ts FROM audit ORDER BY id LIMIT ?", (batch,))
            old = [r["id"] for r in rows if r["ts"] < before]
            if not old:
                return 0
            return tx.execute("DELETE FROM audit WHERE id <= ? AND ts < ?", (max(old), before))

        return await self.transaction(run)

    async def ended_jobs(self, before: float, limit: int = 100) -> list[str]:
        """Ids of MCP jobs that ended before ``before``, oldest first."""
        marks = ", ".join("?" for _ in JOB_FINAL_STATES)
        sql = (f"SELECT id FROM mcp_jobs WHERE state IN ({marks}) AND finished_at < ? "
               "ORDER BY finished_at LIMIT ?")
        rows = await self.read(lambda r: r.rows(sql, (*JOB_FINAL_STATES, before, limit)))
        return [r["id"] for r in rows]

    async def abandoned_jobs(self, before: float, limit: int = 100) -> list[str]:
        """Ids of jobs still marked ``running`` that started before ``before``: left by a
        hub process that stopped while they ran (the caller checks none of them runs now)."""
        sql = ("SELECT id FROM mcp_jobs WHERE state='running' AND created_at < ? "
               "ORDER BY created_at LIMIT ?")
        return [r["id"] for r in await self.read(lambda r: r.rows(sql, (before, limit)))]

    async def prune_job(self, job_id: str, batch: int = DEFAULT_BATCH) -> tuple[int, bool]:
        """Delete up to ``batch`` rows of a job's output, and the job itself once its output is
        gone: ``(rows deleted, whether the job is gone)``. Only a job in a final state, or one
        marked ``running`` that the caller knows no task runs. Pinned by
        tests/hub/test_janitor.py::test_output_of_ended_jobs_is_pruned_running_ones_kept."""

        def run(tx: Tx) -> tuple[int, bool]:
            first = tx.one("SELECT min(seq) AS seq FROM mcp_job_output WHERE job_id=?", (job_id,))
            if first is not None and first["seq"] is not None:
                upto = int(first["seq"]) + batch - 1
                return tx.execute("DELETE FROM mcp_job_output WHERE job_id=? AND seq <= ?",
                                  (job_id, upto)), False
            return tx.execute("DELETE FROM mcp_jobs WHERE id=?", (job_id,)), True

        return await self.transaction(run)

    async def closed_workstreams(self, before: float, limit: int = 100) -> list[str]:
        """Workstreams closed before ``before`` whose event log is not pruned yet (a closed
        workstream's ``updated_at`` is when it closed: nothing changes it afterwards)."""
        sql = ("SELECT id FROM workstreams WHERE state='closed' AND updated_at < ? "
               "AND events_pruned_at IS NULL ORDER BY updated_at LIMIT ?")
        return [r["id"] for r in await self.read(lambda r: r.rows(sql, (before, limit)))]

    async def prune_workstream_events(self, ws_id: str, before: float,
                                      batch: int = DEFAULT_BATCH) -> tuple[int, bool]:
        """Delete up to ``batch`` events of a workstream closed before ``before`` (checked in
        the same transaction: an open one, or one closed since, is never touched); once its
        log is empty, its inbox and approvals too, and it is marked ``events_pruned_at``:
        ``(rows deleted, whether it is done)``. Pinned by
        tests/hub/test_janitor.py::test_closed_workstreams_lose_their_event_logs_open_ones_never."""
        now = self.clock()

        def run(tx: Tx) -> tuple[int, bool]:
            ws = tx.one("SELECT state, updated_at FROM workstreams WHERE id=?", (ws_id,))
            if ws is None or ws["state"] != "closed" or ws["updated_at"] >= before:
                return 0, True
            first = tx.one("SELECT min(seq) AS seq FROM ws_events WHERE ws_id=?", (ws_id,))
            if first is not None and first["seq"] is not None:
                upto = int(first["seq"]) + batch - 1
                return tx.execute("DELETE FROM ws_events WHERE ws_id=? AND seq <= ?",
                                  (ws_id, upto)), False
            gone = tx.execute("DELETE FROM ws_inbox WHERE ws_id=?", (ws_id,))
            gone += tx.execute("DELETE FROM approvals WHERE ws_id=?", (ws_id,))
            tx.execute("UPDATE workstreams SET events_pruned_at=? WHERE id=?", (now, ws_id))
            return gone, True

        return await self.transaction(run)
