"""The fleet views: what is running where, one run by id, and a live look inside its box.

A **run** is one attempt of a piece of work on a spoke (DESIGN.md, "Hub surfaces"):

- a workstream's lease on a spoke (``run_…``, the ``runs`` table, hub/store/runs.py): a
  workstream resumed on another spoke after a loss has two;
- an exec job started over MCP (its ``job_…`` id, the ``mcp_jobs`` table, hub/mcp/jobs.py);
- an exec in flight through ``POST /api/boxes/{id}/exec`` or MCP's short ``exec``
  (``ex_…``, kept in memory by :class:`~hub.boxes.BoxService`: listed while it runs and for
  the last 256 that ended; not kept across a hub restart).

``GET /api/workers/active`` answers from one store snapshot plus what the registry and the box
service hold in memory, so a dashboard polling it costs one read. Routes are documented in
docs/api.md ("Fleet, events and history"). Pinned by tests/hub/test_fleet_memory.py and
tests/test_fleet_api.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from hub.boxes import BoxService
from hub.openapi import Reply, operation
from hub.openapi.models import fleet as m
from hub.registry import Registry
from hub.store import LIVE_BOX_STATES, Store
from hub.workstreams.journal import BUSY_STATES
from protocol.errors import ErrorCode, RemoteError


class Fleet:
    """The views behind the routes (usable without HTTP, as the tests in tests/hub/ do)."""

    def __init__(self, store: Store, registry: Registry, boxes: BoxService, *,
                 job_running: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.store, self.registry, self.boxes = store, registry, boxes
        # Whether this hub process runs a job (hub/mcp/jobs.py JobRunner.is_running).
        self.job_running = job_running or (lambda job_id: job_id in boxes.execs)
        self.clock = clock or store.clock

    def _heartbeat(self, spoke: str | None, spokes: dict[str, dict[str, Any]]) -> tuple[Any, str]:
        """(last heartbeat time, state) of ``spoke``: the live link's last heartbeat, else
        when the hub last heard of it at all (``last_seen``)."""
        row = spokes.get(spoke or "")
        link = self.registry.local(spoke or "")
        state = self.registry.spoke_state(row, link) if row is not None else "unknown"
        if link is None and row is not None and (spoke or "") in self.registry.remote.holders:
            state = "revoked" if row.get("revoked_at") is not None else "connected"  # another hub's
        if link is not None:
            return link.last_heartbeat_at or link.connected_at, state
        return (row or {}).get("last_seen"), state

    async def active_workers(self) -> dict[str, Any]:
        """Every busy workstream (``starting``, ``thinking``, ``running``, ``attention``) and
        every exec in flight, with spoke, box, start time and the spoke's last heartbeat.
        Pinned by tests/hub/test_fleet_memory.py::test_workers_active_lists_busy_work and
        tests/test_fleet_api.py::test_workers_runs_and_inspect."""
        snap = await self.store.active_workers(BUSY_STATES)
        spokes = snap["spokes"]
        workers: list[dict[str, Any]] = []
        for ws in snap["workstreams"]:
            beat, spoke_state = self._heartbeat(ws["spoke"], spokes)
            workers.append({
                "kind": "workstream", "id": ws["id"], "run_id": ws["run_id"] or None,
                "state": ws["state"], "spoke": ws["spoke"], "spoke_state": spoke_state,
                "box": ws["box_id"] or None,
                "started_at": ws["run_started_at"] if ws["run_started_at"] is not None else ws["updated_at"],
                "last_heartbeat": beat, "attempt": ws["attempt"],
                "title": ws["title"], "model": ws["model"],
            })
        for run in sorted(self.boxes.execs.values(), key=lambda r: r["started_at"]):
            beat, spoke_state = self._heartbeat(run["spoke"], spokes)
            workers.append({
                "kind": run["kind"], "id": run["id"], "run_id": run["id"], "state": run["state"],
                "spoke": run["spoke"], "spoke_state": spoke_state, "box": run["box"],
                "started_at": run["started_at"], "last_heartbeat": beat, "cmd": run["cmd"],
            })
        return {"workers": workers, "count": len(workers), "checked_at": self.clock()}

    async def run(self, run_id: str) -> dict[str, Any]:
        """One run by id (any of the three kinds); ``not_found`` when there is none.
        Pinned by tests/hub/test_fleet_memory.py::test_a_resumed_workstream_has_two_runs."""
        if run_id.startswith("run_"):
            row = await self.store.get_run(run_id)
            if row is not None:
                return {"id": row["id"], "kind": "workstream", "ws_id": row["ws_id"],
                        "attempt": row["attempt"], "spoke": row["spoke"],
                        "box": row["box_id"] or None, "state": row["state"],
                        "started_at": row["started_at"], "ended_at": row["ended_at"],
                        "outcome": row["outcome"], "detail": row["detail"],
                        "ws_state": row["ws_state"], "title": row["title"], "model": row["model"]}
        if run_id.startswith("job_"):
            job = await self.store.get_job_run(run_id)
            if job is not None:
                running = job["state"] == "running"
                # A job row left "running" by an earlier hub process is no longer running.
                state = "running" if running and self.job_running(run_id) else "ended"
                outcome = "" if state == "running" else ("interrupted" if running else job["state"])
                return {"id": job["id"], "kind": "job", "box": job["box_id"], "spoke": job["spoke"],
                        "cmd": json.loads(job["cmd"]), "state": state, "outcome": outcome,
                        "exit_code": job["exit_code"], "started_at": job["created_at"],
                        "ended_at": job["finished_at"], "detail": job["error"]}
        live = self.boxes.exec_run(run_id)
        if live is not None:
            ended = live["state"] != "running"
            return {"id": live["id"], "kind": live["kind"], "box": live["box"],
                    "spoke": live["spoke"], "cmd": live["cmd"],
                    "state": "ended" if ended else "running", "outcome": live["state"] if ended else "",
                    "exit_code": live["exit_code"], "started_at": live["started_at"],
                    "ended_at": live["ended_at"], "detail": live.get("error", "")}
        raise RemoteError(ErrorCode.NOT_FOUND, f"no run {run_id[:80]}")

    async def inspect(self, run_id: str) -> dict[str, Any]:
        """Live cpu, memory, pids and status of the run's box (``box.stats`` on its spoke),
        or ``{"alive": false, "reason"}`` when the run ended, has no box, the box is gone, or
        its spoke is not connected. Pinned by tests/test_fleet_api.py::test_workers_runs_and_inspect."""
        run = await self.run(run_id)
        base = {"run": run_id, "box": run.get("box"), "spoke": run.get("spoke"),
                "checked_at": self.clock()}
        if run["state"] != "running":
            return {**base, "alive": False, "reason": f"the run ended ({run['outcome'] or 'ended'})"}
        box_id = run.get("box")
        if not box_id:
            return {**base, "alive": False, "reason": "the run has no box (yet)"}
        box = await self.store.get_box(box_id)
        if box is None or box["state"] not in LIVE_BOX_STATES:
            return {**base, "alive": False,
                    "reason": f"box {box_id} is {box['state'] if box else 'unknown to the hub'}"}
        if self.registry.live(box["spoke"]) is None:
            return {**base, "alive": False, "reason": f"spoke {box['spoke']} is not connected"}
        try:
            stats = await self.boxes.stats(box_id)
        except RemoteError as err:
            if err.code is ErrorCode.NOT_FOUND:
                return {**base, "alive": False, "reason": f"box {box_id} is gone on its spoke"}
            raise
        return {**base, "alive": True, "status": box["state"], **stats}


class FleetApi:
    """``GET /api/workers/active``, ``/api/runs/{id}``, ``/api/runs/{id}/inspect``."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/workers/active", self.workers),
            web.get("/api/runs/{id}", self.run),
            web.get("/api/runs/{id}/inspect", self.inspect),
        ]

    @operation("Work running now", tag="fleet", description="Every busy workstream and "
               "every exec or exec job in flight, with its spoke, box and start time.",
               replies=(Reply(200, "one snapshot", m.Workers),))
    async def workers(self, request: web.Request) -> web.Response:
        return web.json_response(await self.fleet.active_workers())

    @operation("One run", tag="fleet", description="`run_…` (a workstream's lease), "
               "`job_…` (an MCP exec job) or `ex_…` (an exec).",
               replies=(Reply(200, "the run", m.Run),))
    async def run(self, request: web.Request) -> web.Response:
        return web.json_response(await self.fleet.run(request.match_info["id"]))

    @operation("A live look inside a run's box", tag="fleet", description="Its box's "
               "live usage, or `alive: false` with the reason.",
               replies=(Reply(200, "usage, or why there is none", m.Inspection),),
               errors=(403, 429, 503, 504))
    async def inspect(self, request: web.Request) -> web.Response:
        return web.json_response(await self.fleet.inspect(request.match_info["id"]))
