"""Runs: one attempt of a piece of work on a spoke, and the fleet's one-read worker view.

A workstream's run is its lease on a spoke: it starts when the spoke accepts ``ws.start`` and
ends when the workstream is closed, when its spoke lost the agent (it restarted: the work is
resumed elsewhere or later, in a new run), or when the spoke is revoked. So a workstream
resumed on another spoke after a loss has two runs, and ``attempt`` counts them. Exec jobs are
runs too; they keep their own table (``mcp_jobs``, :mod:`hub.mcp.jobs`) and are read here by id.

Everything goes through the store's transaction API with portable SQL (hub/store/engine.py).
The worker view reads several tables (workstreams, runs, spokes) in one snapshot on purpose:
``GET /api/workers/active`` is one query. Pinned by tests/hub/test_fleet_memory.py
(runs across a resume) and tests/test_fleet_api.py.
"""

from __future__ import annotations

from typing import Any

from hub.store.base import StoreBase
from hub.store.engine import Reader, Tx
from protocol.tokens import new_id

RUN_COLUMNS = ("id", "kind", "ws_id", "spoke", "box_id", "attempt", "state", "started_at",
               "ended_at", "outcome", "detail")


def _marks(values: tuple[str, ...]) -> str:
    return ", ".join("?" for _ in values)


class RunTables(StoreBase):
    """The ``runs`` table (migration 7) and the reads of the fleet views."""

    async def run_started(self, ws_id: str, spoke: str, box_id: str,
                          started_at: float | None = None) -> dict[str, Any]:
        """Record that ``spoke`` accepted the lease of ``ws_id`` and make it the workstream's
        current run, in one transaction; a run of it still open (the hub never heard it end)
        is ended first as ``superseded``. ``started_at`` is when the lease began (default: now).
        Pinned by tests/hub/test_fleet_memory.py::test_a_resumed_workstream_has_two_runs."""
        now = self.clock()
        run_id = new_id("run")

        def run(tx: Tx) -> dict[str, Any]:
            tx.execute("UPDATE runs SET state='ended', ended_at=?, outcome='superseded' "
                       "WHERE ws_id=? AND state='running'", (now, ws_id))
            count = tx.one("SELECT count(*) AS n FROM runs WHERE ws_id=?", (ws_id,))
            row = {"id": run_id, "kind": "workstream", "ws_id": ws_id, "spoke": spoke,
                   "box_id": box_id, "attempt": int(count["n"] if count else 0) + 1,
                   "state": "running", "started_at": started_at if started_at is not None else now,
                   "ended_at": None, "outcome": "", "detail": ""}
            tx.insert("runs", row)
            tx.update("workstreams", "id", ws_id, {"run_id": run_id})
            return row

        return await self.transaction(run)

    async def run_ended(self, ws_id: str, outcome: str, detail: str = "") -> int:
        """End the open run of ``ws_id`` (``closed``, ``lost``, …); returns how many ended
        (0: none was open). Pinned by tests/hub/test_fleet_memory.py."""
        sql = ("UPDATE runs SET state='ended', ended_at=?, outcome=?, detail=? "
               "WHERE ws_id=? AND state='running'")
        params = (self.clock(), outcome, detail[:500], ws_id)
        return await self.transaction(lambda tx: tx.execute(sql, params))

    async def runs_ended_on_spoke(self, spoke: str, outcome: str, detail: str = "") -> int:
        """End every open run on ``spoke`` (it was revoked: none of them can go on there).
        Pinned by tests/hub/test_fleet_memory.py::test_a_clean_stop_is_left_and_states_survive_a_restart."""
        sql = ("UPDATE runs SET state='ended', ended_at=?, outcome=?, detail=? "
               "WHERE spoke=? AND state='running'")
        params = (self.clock(), outcome, detail[:500], spoke)
        return await self.transaction(lambda tx: tx.execute(sql, params))

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """A workstream run with its workstream's state, or None. Pinned by
        tests/hub/test_fleet_memory.py::test_a_resumed_workstream_has_two_runs."""
        sql = (f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, w.state AS ws_state, "
               "w.title AS title, w.model AS model FROM runs r "
               "LEFT JOIN workstreams w ON w.id = r.ws_id WHERE r.id=?")
        return await self.read(lambda r: r.one(sql, (run_id,)))

    async def runs_of(self, ws_id: str) -> list[dict[str, Any]]:
        """Every run of a workstream, first attempt first. Pinned by
        tests/hub/test_fleet_memory.py::test_a_resumed_workstream_has_two_runs."""
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE ws_id=? ORDER BY attempt"
        return await self.read(lambda r: r.rows(sql, (ws_id,)))

    async def get_job_run(self, job_id: str) -> dict[str, Any] | None:
        """An exec job (``mcp_jobs``) as a run: its box, the box's spoke and live-ness.
        Pinned by tests/test_fleet_api.py::test_workers_runs_and_inspect."""
        sql = ("SELECT j.id, j.box_id, j.cmd, j.state, j.exit_code, j.error, j.created_at, "
               "j.finished_at, b.spoke AS spoke, b.state AS box_state FROM mcp_jobs j "
               "LEFT JOIN boxes b ON b.id = j.box_id WHERE j.id=?")
        return await self.read(lambda r: r.one(sql, (job_id,)))

    async def active_workers(self, busy_states: tuple[str, ...]) -> dict[str, Any]:
        """One snapshot for ``GET /api/workers/active``: every workstream in ``busy_states``
        with its current run, and every spoke's ``last_seen`` (for workers whose spoke is not
        connected, and for the execs the box service tracks in memory). Pinned by
        tests/hub/test_fleet_memory.py::test_workers_active_lists_busy_work."""
        ws_sql = (
            "SELECT w.id, w.state, w.spoke, w.box_id, w.model, w.title, w.run_id, w.updated_at, "
            "r.started_at AS run_started_at, r.attempt AS attempt FROM workstreams w "
            f"LEFT JOIN runs r ON r.id = w.run_id WHERE w.state IN ({_marks(busy_states)}) "
            "ORDER BY w.created_at")
        spoke_sql = "SELECT name, last_seen, state, revoked_at FROM spokes"

        def run(r: Reader) -> dict[str, Any]:
            return {"workstreams": r.rows(ws_sql, busy_states),
                    "spokes": {s["name"]: s for s in r.rows(spoke_sql)}}

        return await self.read(run)


__all__ = ["RUN_COLUMNS", "RunTables"]
