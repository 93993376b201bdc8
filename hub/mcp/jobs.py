"""Long-running execs for MCP clients: durable jobs whose output is read by cursor.

A chatbot's request may time out long before a build finishes, so ``start_exec`` returns a job
id at once and the exec runs in a task at the hub. Its output is appended to SQLite as it
arrives (coalesced: while one write is in flight, new output accumulates and goes in the next
transaction, so a quiet job's last line is readable at once and a chatty one costs few
writes). A reader asks for everything after its cursor; nothing depends on the client staying
connected, and the output survives a hub restart.

A job row still marked ``running`` that no task in this process owns was left by an earlier
hub process: it is marked ``interrupted`` the first time anyone looks at it. That needs no
startup ordering and is exact: this process starts no job without registering its task first.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from hub.boxes import BoxService
from hub.store import LIVE_BOX_STATES, Reader, Store, Tx
from protocol import verbs
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import new_id

log = logging.getLogger("spokehub.hub.mcp.jobs")

MAX_JOB_OUTPUT_CHARS = 16 * 1024 * 1024  # kept per job; past it output is dropped, not the job
MAX_READ_CHARS = 256 * 1024
MAX_WAIT_S = 30.0
FINAL_STATES = ("exited", "failed", "cancelled", "timed_out", "interrupted")
_OUTPUT_PAGE = 64  # output rows read per statement


def new_job_id() -> str:
    return new_id("job")


class JobStore:
    """The job tables (migration 3), through the store's public transaction API.

    ``clock`` (wall-clock seconds for ``created_at``, ``finished_at`` and output timestamps)
    defaults to the store's. Pinned end to end by tests/test_mcp.py and without processes by
    tests/hub/test_store.py::test_job_output_is_read_by_cursor_within_max_chars."""

    def __init__(self, store: Store, clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.clock = clock if clock is not None else store.clock

    async def create(self, job_id: str, owner: str, box_id: str, cmd: list[str]) -> None:
        row = {
            "id": job_id, "owner": owner, "box_id": box_id, "cmd": json.dumps(cmd),
            "state": "running", "exit_code": None, "error": "", "created_at": self.clock(),
            "finished_at": None, "last_seq": 0, "out_chars": 0, "truncated": 0,
        }
        await self.store.transaction(lambda tx: tx.insert("mcp_jobs", row))

    async def get(self, job_id: str, owner: str) -> dict[str, Any] | None:
        sql = "SELECT * FROM mcp_jobs WHERE id=? AND owner=?"
        return await self.store.read(lambda r: r.one(sql, (job_id, owner)))

    async def recent(self, owner: str, limit: int) -> list[dict[str, Any]]:
        sql = "SELECT * FROM mcp_jobs WHERE owner=? ORDER BY created_at DESC LIMIT ?"
        return await self.store.read(lambda r: r.rows(sql, (owner, limit)))

    async def append(self, job_id: str, chunks: list[tuple[str, str]], truncated: bool) -> int:
        """Append ``(stream, text)`` chunks in one transaction; returns the new last seq.
        ``truncated`` only ever turns the job's flag on."""
        now = self.clock()

        def run(tx: Tx) -> int:
            job = tx.one("SELECT last_seq, truncated FROM mcp_jobs WHERE id=?", (job_id,))
            if job is None:
                raise RemoteError(ErrorCode.NOT_FOUND, f"no job {job_id}")
            seq = int(job["last_seq"])
            for stream, data in chunks:
                seq += 1
                tx.insert("mcp_job_output", {
                    "job_id": job_id, "seq": seq, "ts": now, "stream": stream, "data": data})
            tx.execute(
                "UPDATE mcp_jobs SET last_seq=?, out_chars=out_chars+?, truncated=? WHERE id=?",
                (seq, sum(len(d) for _, d in chunks), int(bool(job["truncated"]) or truncated), job_id),
            )
            return seq

        return await self.store.transaction(run)

    async def finish(self, job_id: str, state: str, exit_code: int | None, error: str) -> bool:
        """Record a final state, only over ``running`` (the first final word wins)."""
        sql = (
            "UPDATE mcp_jobs SET state=?, exit_code=?, error=?, finished_at=? "
            "WHERE id=? AND state='running'"
        )
        params = (state, exit_code, error[:2000], self.clock(), job_id)
        return await self.store.transaction(lambda tx: tx.execute(sql, params)) == 1

    async def output(self, job_id: str, after: int, max_chars: int) -> list[dict[str, Any]]:
        """Chunks after ``after``, in order, stopping once ``max_chars`` is reached (at least
        one chunk is returned if any is pending, so a reader always makes progress). Read in
        pages, so a long backlog is never loaded whole."""
        sql = (
            "SELECT seq, stream, data FROM mcp_job_output WHERE job_id=? AND seq>? "
            "ORDER BY seq LIMIT ?"
        )

        def run(r: Reader) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            total, cursor = 0, after
            while True:
                page = r.rows(sql, (job_id, cursor, _OUTPUT_PAGE))
                for chunk in page:
                    if out and total + len(chunk["data"]) > max_chars:
                        return out
                    out.append(chunk)
                    total += len(chunk["data"])
                if len(page) < _OUTPUT_PAGE:
                    return out
                cursor = page[-1]["seq"]

        return await self.store.read(run)


class _OutputSink:
    """Buffers decoded output of one job and writes it in as few transactions as possible."""

    def __init__(self, jobs: JobStore, job_id: str, notify: Any) -> None:
        self.jobs, self.job_id, self._notify = jobs, job_id, notify
        self._pending: list[tuple[str, str]] = []
        self._writer: asyncio.Task[None] | None = None
        self._decoders = {
            s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")
        }
        self.kept = 0
        self.truncated = False

    def add(self, stream: str, data: bytes, final: bool = False) -> None:
        text = self._decoders[stream].decode(data, final=final)
        if not text:
            return
        room = MAX_JOB_OUTPUT_CHARS - self.kept
        if room <= 0:
            self.truncated = True
            return
        if len(text) > room:
            text, self.truncated = text[:room], True
        self.kept += len(text)
        if self._pending and self._pending[-1][0] == stream:
            self._pending[-1] = (stream, self._pending[-1][1] + text)
        else:
            self._pending.append((stream, text))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await self.jobs.append(self.job_id, batch, self.truncated)
            self._notify(self.job_id)

    async def drain(self) -> None:
        for stream in ("stdout", "stderr"):
            self.add(stream, b"", final=True)
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._pending:  # pragma: no cover - only if the writer failed mid-way
            await self._write_loop()


class JobRunner:
    """Starts, tracks, reads and cancels jobs; one asyncio task per running job.

    ``clock`` stamps the job rows (default: the store's wall clock); ``monotonic`` measures
    how long :meth:`read` waits (default :func:`time.monotonic`). Pinned end to end by
    tests/test_mcp.py and without processes by
    tests/hub/test_store.py::test_a_job_left_running_by_an_earlier_hub_reads_as_interrupted."""

    def __init__(
        self,
        store: Store,
        boxes: BoxService,
        *,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = JobStore(store, clock)
        self.boxes = boxes
        self.monotonic = monotonic
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._stop_reason: dict[str, str] = {}

    def is_running(self, job_id: str) -> bool:
        """Whether this process runs job ``job_id`` now (a row still marked ``running``
        without a task here was left by an earlier hub). Used by hub/fleet.py."""
        return job_id in self._tasks

    def _notify(self, job_id: str) -> None:
        event = self._waiters.pop(job_id, None)
        if event is not None:
            event.set()

    async def start(self, owner: str, params: verbs.BoxExec) -> dict[str, Any]:
        """Start ``params`` (built once by :meth:`BoxService.exec_params`) as a job of
        ``owner``'s and return its status at once."""
        box_id = params.box_id
        await self._check_box(box_id)  # fail fast, before there is a job to clean up
        job_id = new_job_id()
        ready = asyncio.Event()
        # Registered before the row exists: a running row without a task here means "left by an
        # earlier hub process" (see the module docstring).
        task = asyncio.get_running_loop().create_task(self._run(job_id, params, ready))
        self._tasks[job_id] = task
        try:
            await self.jobs.create(job_id, owner, box_id, list(params.cmd))
        except BaseException:
            task.cancel()
            self._tasks.pop(job_id, None)
            raise
        ready.set()
        return await self.status(job_id, owner)

    async def _check_box(self, box_id: str) -> None:
        box = await self.boxes.store.get_box(box_id)
        if box is None or box["state"] not in LIVE_BOX_STATES:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no live box {box_id}")

    async def _run(self, job_id: str, params: verbs.BoxExec, ready: asyncio.Event) -> None:
        state, exit_code, error = "failed", None, ""
        sink = _OutputSink(self.jobs, job_id, self._notify)
        try:
            await ready.wait()
            # Under the job's id, so the fleet views (hub/fleet.py) show it as this run.
            async with contextlib.aclosing(self.boxes.exec(params, run_id=job_id)) as stream:
                async for kind, value in stream:
                    if kind == "exit":
                        exit_code = int(value.get("exit_code", -1))
                        state = (
                            "timed_out" if value.get("timed_out")
                            else "cancelled" if value.get("cancelled") else "exited"
                        )
                    else:
                        sink.add(kind, value)
        except asyncio.CancelledError:
            state = self._stop_reason.get(job_id, "interrupted")
            error = "cancelled by cancel_job" if state == "cancelled" else "the hub stopped"
            raise
        except RemoteError as err:
            state, error = "failed", str(err)
        except Exception as err:  # a job must always end in a final state
            log.exception("job %s failed", job_id)
            state, error = "failed", f"internal: {err}"
        finally:
            try:
                await sink.drain()
            except Exception:
                log.exception("could not store the last output of job %s", job_id)
            try:
                await self.jobs.finish(job_id, state, exit_code, error)
            except Exception:  # the row stays running; the next reader marks it interrupted
                log.exception("could not record the end of job %s", job_id)
            self._tasks.pop(job_id, None)
            self._notify(job_id)

    async def status(self, job_id: str, owner: str) -> dict[str, Any]:
        row = await self.jobs.get(job_id, owner)
        if row is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no job {job_id} for this API key")
        if row["state"] == "running" and job_id not in self._tasks:
            await self.jobs.finish(
                job_id, "interrupted", None,
                "the hub restarted while this job ran; the output it produced is kept",
            )
            row = await self.jobs.get(job_id, owner)
            assert row is not None
        return public_job(row)

    async def recent(self, owner: str, limit: int = 50) -> list[dict[str, Any]]:
        return [await self.status(r["id"], owner) for r in await self.jobs.recent(owner, limit)]

    async def read(
        self, job_id: str, owner: str, cursor: int, max_chars: int, wait_s: float
    ) -> dict[str, Any]:
        """Output after ``cursor``; waits up to ``wait_s`` for some if there is none yet."""
        max_chars = max(1, min(max_chars, MAX_READ_CHARS))
        deadline = self.monotonic() + max(0.0, min(wait_s, MAX_WAIT_S))
        while True:
            job = await self.status(job_id, owner)  # the row first: a final state implies all
            running = job["state"] == "running"  # of its output is already stored
            # Registered before the output is read, so a flush in between is not missed.
            waiter = self._waiters.setdefault(job_id, asyncio.Event()) if running else None
            chunks = await self.jobs.output(job_id, cursor, max_chars)
            remaining = deadline - self.monotonic()
            if chunks or waiter is None or remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)
        next_cursor = chunks[-1]["seq"] if chunks else cursor
        return {
            "job": job_id,
            "state": job["state"],
            "exit_code": job["exit_code"],
            "stdout": "".join(c["data"] for c in chunks if c["stream"] == "stdout"),
            "stderr": "".join(c["data"] for c in chunks if c["stream"] == "stderr"),
            "cursor": next_cursor,
            "more": next_cursor < job["last_seq"],
            "done": job["state"] != "running" and next_cursor >= job["last_seq"],
        }

    async def cancel(self, job_id: str, owner: str, wait_s: float = 30.0) -> dict[str, Any]:
        """Cancel the exec (the spoke kills the process) and wait until the job has ended."""
        job = await self.status(job_id, owner)
        task = self._tasks.get(job_id)
        if job["state"] != "running" or task is None:
            return job
        self._stop_reason[job_id] = "cancelled"
        task.cancel()
        await asyncio.wait({task}, timeout=wait_s)
        self._stop_reason.pop(job_id, None)
        return await self.status(job_id, owner)

    async def stop(self) -> None:
        """Hub shutdown: end every running job (killing its process) and record it interrupted."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10.0)


def public_job(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "job": row["id"],
        "box": row["box_id"],
        "cmd": json.loads(row["cmd"]),
        "state": row["state"],
        "exit_code": row["exit_code"],
        "error": row["error"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "last_seq": row["last_seq"],
        "output_chars": row["out_chars"],
        "output_truncated": bool(row["truncated"]),
    }
