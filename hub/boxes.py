"""Box operations at the hub: record first, then ask the spoke, then reconcile.

A box row is written (state ``creating``) before the spoke is asked, so a create whose caller
gives up never leaves a container nobody knows about: a failed or abandoned create is marked
``failed`` and removed on the spoke, now or at its next reconnect (reaping keeps only boxes the
hub records as running).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shlex
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from hub.audit import Outcome, audited
from hub.box_activity import BoxActivity
from hub.registry import Registry
from hub.spoke_calls import SpokeCalls
from hub.store import LIVE_BOX_STATES, Store
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import new_id

log = logging.getLogger("spokehub.hub.boxes")
ENDED_EXECS_KEPT = 256  # ended execs the fleet views still answer for
RESUME_WAIT_S = 30.0  # an exec whose spoke link broke waits this long for it to come back


class BoxService:
    """Box operations for the REST API and MCP. Pinned by tests/hub/test_registry_memory.py
    (over the in-memory pipe), tests/test_boxes_e2e.py and tests/test_box_cp.py."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        # Execs in flight (REST, MCP jobs and MCP's short exec alike), by run id, and the last
        # few that ended: the fleet views' exec runs (hub/fleet.py). Memory only, bounded.
        self.execs: dict[str, dict[str, Any]] = {}
        self.ended_execs: deque[dict[str, Any]] = deque(maxlen=ENDED_EXECS_KEPT)
        # What the janitor's idle TTL counts from: execs and transfers (hub/box_activity.py).
        self.activity = BoxActivity(store)

    def exec_run(self, run_id: str) -> dict[str, Any] | None:
        """A running or recently ended exec by its run id (``ex_…``, or a job's id), or None.
        Pinned by tests/hub/test_fleet_memory.py::test_workers_active_lists_busy_work."""
        if run_id in self.execs:
            return self.execs[run_id]
        return next((e for e in self.ended_execs if e["id"] == run_id), None)

    async def _link(self, spoke: str) -> SpokeCalls:
        """The live link to ``spoke``. A name the hub never enrolled is ``not_found`` (a typo
        should not read as an outage), as is a revoked one (it never comes back); an enrolled
        spoke that is offline is ``unavailable``."""
        link = self.registry.live(spoke)
        if link is not None:
            return link
        row = await self.store.get_spoke(spoke)
        if row is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no spoke {spoke!r} (see: hub spoke list)")
        if row.get("revoked_at") is not None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"spoke {spoke!r} was revoked")
        return self.registry.link(spoke)  # raises: the spoke is not connected

    async def _live_box(self, box_id: str) -> dict[str, Any]:
        """The record of a live box; ``box_id`` comes from params already built (validated)."""
        box = await self.store.get_box(box_id)
        if box is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no box {box_id}")
        if box["state"] not in LIVE_BOX_STATES:
            raise RemoteError(ErrorCode.NOT_FOUND, f"box {box_id} is {box['state']}")
        return box

    async def _usable_box(self, box_id: str) -> dict[str, Any]:
        """A live box that may take work: a paused one is refused here, before the spoke is
        asked (the spoke refuses it too). Pinned by tests/test_box_pause.py."""
        box = await self._live_box(box_id)
        if box["state"] == "paused":
            raise RemoteError(ErrorCode.BUSY, f"box {box_id} is paused: resume it first "
                              f"(hub box resume {box_id})")
        return box

    async def pause(self, box_id: str, *, resume: bool = False) -> dict[str, Any]:
        """Freeze (or, ``resume``, thaw) a box on its spoke and record the state the spoke
        reports; audited. Pinned by tests/test_box_pause.py."""
        verb = v.BOX_RESUME if resume else v.BOX_PAUSE
        with v.validating(verb):
            ref = v.BoxRef(box_id=box_id)
        box = await self._live_box(box_id)
        if box["state"] == "creating":
            raise RemoteError(ErrorCode.BUSY, f"box {box_id} is still being created")
        async with audited(self.store, verb.name, box_id, "", spoke=box["spoke"]):
            info = await (await self._link(box["spoke"])).call(verb, ref)
            state = "paused" if info.state == "paused" else "running"
            await self.store.set_box_state(box_id, state)
        return {"id": box_id, "spoke": box["spoke"], "image": box["image"], "state": state,
                "created_at": box["created_at"]}

    async def create(self, spoke: str, params: dict[str, Any]) -> dict[str, Any]:
        """Record, then create on ``spoke``; audited (``box.create``, with the caller and
        the result). Pinned by tests/test_boxes_e2e.py and tests/test_audit.py."""
        box_id = new_id("bx")
        model = v.build(v.BOX_CREATE, {**params, "box_id": box_id})
        async with audited(self.store, "box.create", box_id, model.image,
                           spoke=spoke) as outcome:
            link = await self._link(spoke)
            await self.store.add_box(box_id, spoke, model.image,
                                     model.model_dump(exclude={"box_id"}))
            try:
                info = await link.call(v.BOX_CREATE, model)
            except BaseException:
                await self.store.set_box_state(box_id, "failed")
                asyncio.get_running_loop().create_task(self._cleanup(spoke, box_id))
                raise
            # ``running`` is committed with the audit row, as the block ends (one round trip).
            outcome.also = self.store.box_state_write(box_id, "running")
        return {"id": box_id, "spoke": spoke, **info.model_dump(exclude={"box_id"})}

    async def _cleanup(self, spoke: str, box_id: str) -> None:
        try:
            await (await self._link(spoke)).call(v.BOX_DESTROY, v.BoxRef(box_id=box_id))
        except RemoteError as err:
            log.info("cleanup of %s on %s deferred to reconnect: %s", box_id, spoke, err)

    async def inventory(self, spoke: str | None = None) -> list[dict[str, Any]]:
        """What really exists next to what the hub records (``GET /api/boxes?all=1``).

        The hub's rows are what it believes; leaked containers are a classic bug class, so
        this asks each connected spoke (``box.list``, all at once, bounded) and shows where
        the two disagree: boxes a spoke has that the hub does not record as live, and live
        records a spoke lacks or could not be asked about. ``state`` is the hub's record
        (None: no record), ``on_spoke`` the container's state there (None: not there)."""
        if spoke is not None and await self.store.get_spoke(spoke) is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no spoke {spoke!r} (see: hub spoke list)")
        records = await self.store.list_boxes(spoke=spoke)
        connected = [link.name for link in self.registry.live_links()
                     if spoke is None or link.name == spoke]

        async def ask(name: str) -> tuple[str, tuple[v.BoxInfoModel, ...] | RemoteError]:
            try:
                listing = await self.registry.link(name).call(v.BOX_LIST, v.Empty(), timeout_s=10.0)
                return name, tuple(listing.boxes)
            except RemoteError as err:
                return name, err

        answers = dict(await asyncio.gather(*(ask(n) for n in connected)))
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for name, answer in answers.items():
            for box in answer if isinstance(answer, tuple) else ():
                seen.add(box.box_id)
                record = await self.store.get_box(box.box_id)
                mine = record is not None and record["spoke"] == name
                note = ""
                if not mine:
                    note = "not recorded by the hub (reaped when the spoke next reconnects)"
                elif record is not None and record["state"] not in LIVE_BOX_STATES:
                    note = f"the hub recorded it {record['state']} (reaped when the spoke next reconnects)"
                rows.append({"id": box.box_id, "spoke": name, "image": box.image,
                             "state": record["state"] if mine and record else None,
                             "on_spoke": box.state, "created_at": box.created_at, "note": note})
        for r in records:
            if r["id"] in seen:
                continue
            reply = answers.get(r["spoke"])
            if reply is None:
                note = "spoke not connected"
            elif isinstance(reply, RemoteError):
                note = f"spoke did not answer: {reply.message}"
            else:
                note = "missing on the spoke (marked lost when it next reconnects)"
            rows.append({"id": r["id"], "spoke": r["spoke"], "image": r["image"],
                         "state": r["state"], "on_spoke": None, "created_at": r["created_at"],
                         "note": note})
        rows.sort(key=lambda row: (row["spoke"], row["created_at"]))
        return rows

    async def list(self, spoke: str | None = None) -> list[dict[str, Any]]:
        if spoke is not None and await self.store.get_spoke(spoke) is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no spoke {spoke!r} (see: hub spoke list)")
        rows = await self.store.list_boxes(spoke=spoke)
        return [
            {
                "id": r["id"],
                "spoke": r["spoke"],
                "image": r["image"],
                "state": r["state"],
                "created_at": r["created_at"],
            }
            for r in rows
        ]

    async def destroy(self, box_id: str, reason: str = "") -> dict[str, Any]:
        """Remove a live box (a box already gone answers ``removed: false``); audited, with
        ``reason`` as the row's detail (the janitor's: idle for how long)."""
        with v.validating(v.BOX_DESTROY):
            ref = v.BoxRef(box_id=box_id)
        box = await self.store.get_box(box_id)
        if box is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no box {box_id}")
        if box["state"] not in LIVE_BOX_STATES:
            return {"id": box_id, "removed": False, "state": box["state"]}
        async with audited(self.store, "box.destroy", box_id, reason, spoke=box["spoke"]) as outcome:
            result = await (await self._link(box["spoke"])).call(v.BOX_DESTROY, ref)
            await self.store.set_box_state(box_id, "destroyed")
            outcome.result = "ok" if result.existed else "ok: it was already gone"
        return {"id": box_id, "removed": result.existed, "state": "destroyed"}

    async def logs(self, box_id: str, tail: int) -> bytes:
        with v.validating(v.BOX_LOGS):
            params = v.BoxLogs(box_id=box_id, tail=tail)
        box = await self._live_box(box_id)
        result = await (await self._link(box["spoke"])).call(v.BOX_LOGS, params)
        return base64.b64decode(result.data)

    async def stats(self, box_id: str) -> dict[str, Any]:
        with v.validating(v.BOX_STATS):
            ref = v.BoxRef(box_id=box_id)
        box = await self._live_box(box_id)
        result = await (await self._link(box["spoke"])).call(v.BOX_STATS, ref)
        return result.model_dump()

    @staticmethod
    def exec_params(box_id: str, fields: dict[str, Any]) -> v.BoxExec:
        """The one hub-side validation of an exec request (REST body or MCP arguments): a
        typed ``invalid`` error naming the bad field, before anything is recorded or sent."""
        return v.build(v.BOX_EXEC, {**fields, "box_id": box_id})

    async def exec(
        self, model: v.BoxExec, *, run_id: str | None = None,
    ) -> AsyncGenerator[tuple[str, Any], None]:
        """Yields ("stdout"|"stderr", bytes) as output arrives, then ("exit", ExecDone dict).
        ``model`` comes from :meth:`exec_params`.

        While it runs it is listed in :attr:`execs` under ``run_id`` (an MCP job passes its
        job id; default: a new ``ex_…`` id), for ``GET /api/workers/active``. Pinned by
        tests/test_boxes_e2e.py, tests/test_exec_disconnect.py and
        tests/hub/test_fleet_memory.py."""
        box_id = model.box_id
        box = await self._usable_box(box_id)
        async with self.activity.using(box_id), audited(
                self.store, "box.exec", box_id, shlex.join(model.cmd)[:500],
                spoke=box["spoke"]) as outcome:
            async with contextlib.aclosing(self._exec(model, box, run_id, outcome)) as stream:
                async for item in stream:
                    yield item

    async def _exec(self, model: v.BoxExec, box: dict[str, Any], run_id: str | None,
                    outcome: Outcome) -> AsyncGenerator[tuple[str, Any], None]:
        box_id = model.box_id
        kind = "job" if run_id else "exec"
        run_id = run_id or new_id("ex")
        # The run id names the exec on the spoke too: it survives a short break of the
        # connection and is re-attached from the offset delivered (spoke/exec_sessions.py).
        model = model.model_copy(update={"exec_id": run_id})
        timeout = model.timeout_s
        deadline_s = (timeout + 30.0) if timeout else None
        link = await self._link(box["spoke"])
        call = await link.call_stream(v.BOX_EXEC, model, timeout_s=deadline_s)
        run = {"id": run_id, "kind": kind, "box": box_id,
               "spoke": box["spoke"], "cmd": list(model.cmd), "state": "running",
               "started_at": self.store.clock(), "ended_at": None, "exit_code": None}
        self.execs[run_id] = run
        finished = False
        delivered = 0  # bytes of output handed to the caller: where a re-attach resumes
        try:
            while True:
                try:
                    async for stream, data in call.chunks():
                        delivered += len(data)
                        yield stream, data
                    result = await call.result()
                    break
                except RemoteError as err:
                    if not (link.closed and err.code is ErrorCode.UNAVAILABLE):
                        raise
                    link = await self._relink(box["spoke"], run_id, err)
                    attach = v.ExecAttach(box_id=box_id, exec_id=run_id, offset=delivered)
                    call = await link.call_stream(v.BOX_ATTACH, attach, timeout_s=deadline_s)
            finished = True
            run["exit_code"] = result.exit_code
            run["state"] = ("timed_out" if result.timed_out else
                            "cancelled" if result.cancelled else "exited")
            outcome.result = ("timed out" if result.timed_out else "cancelled" if result.cancelled
                              else f"exit {result.exit_code}")
            yield "exit", result.model_dump()
        except RemoteError as err:
            run["state"], run["error"] = "failed", str(err)
            raise
        except BaseException:  # the caller went away (aclose, cancel): the exec is cancelled
            run["state"] = "cancelled" if run["state"] == "running" else run["state"]
            raise
        finally:
            if not finished:
                await call.cancel()
            self.execs.pop(run["id"], None)
            run["ended_at"] = self.store.clock()
            self.ended_execs.append(run)

    async def _relink(self, spoke: str, exec_id: str, lost: RemoteError) -> SpokeCalls:
        """The spoke's new link once it reconnects (within RESUME_WAIT_S), to re-attach exec
        ``exec_id``; the original error when it does not come back in time."""
        log.info("exec %s: the link to %s broke; waiting for it to re-attach", exec_id, spoke)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESUME_WAIT_S
        while loop.time() < deadline:
            link = self.registry.live(spoke)
            if link is not None:
                return link
            await asyncio.sleep(0.1)
        raise RemoteError(ErrorCode.UNAVAILABLE, f"{lost.message}; spoke {spoke} did not come back "
                          f"within {RESUME_WAIT_S:.0f} s to finish the command")

    async def put_file(
        self,
        box_id: str,
        path: str,
        size: int,
        mode: int,
        source: AsyncIterator[bytes],
        *,
        parents: bool = False,
        into_dir_name: str | None = None,
    ) -> dict[str, Any]:
        """Upload ``source``; ``path`` may be relative (the spoke resolves it). The result's
        ``path`` is the absolute path the spoke wrote."""
        with v.validating(v.BOX_PUT_FILE):
            params = v.PutFile(box_id=box_id, path=path, size=size, mode=mode, parents=parents,
                               into_dir_name=into_dir_name)
        box = await self._usable_box(box_id)
        async with self.activity.using(box_id), audited(
                self.store, "box.put_file", box_id, f"{path} ({size} bytes)",
                spoke=box["spoke"]) as outcome:
            link = await self._link(box["spoke"])
            result = await link.call_upload(v.BOX_PUT_FILE, params, source)
            outcome.detail = f"{result.path or path} ({size} bytes)"
        return result.model_dump()

    async def get_file(self, box_id: str, path: str, max_bytes: int) -> AsyncGenerator[bytes, None]:
        with v.validating(v.BOX_GET_FILE):
            params = v.GetFile(box_id=box_id, path=path, max_bytes=max_bytes)
        box = await self._usable_box(box_id)
        async with self.activity.using(box_id), audited(
                self.store, "box.get_file", box_id, path, spoke=box["spoke"]) as outcome:
            call = await (await self._link(box["spoke"])).call_stream(v.BOX_GET_FILE, params)
            finished = False
            try:
                async for _stream, data in call.chunks():
                    yield data
                done = await call.result()
                outcome.result = f"ok: {done.size} bytes"
                finished = True
            finally:
                if not finished:
                    await call.cancel()
