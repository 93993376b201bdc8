"""The janitor: one periodic task that reaps idle boxes and applies the hub's retentions.

**Idle boxes** (``hub serve --box-idle-ttl``, off by default: reaping destroys a box's
workspace, so an operator opts in). A box is idle when nothing used it for the TTL: no exec,
no file transfer (hub/box_activity.py; reading logs or stats is not use). A box with a verb in
flight is never idle, however long the verb runs, and neither is the box of a workstream that is
not closed. Reaping goes through :meth:`hub.boxes.BoxService.destroy`, the path an operator's
``hub box rm`` takes: the spoke removes the container, the hub records the box ``destroyed``,
and the audit log has a ``box.destroy`` row whose detail says why. A box whose spoke is not
connected waits until it is (its record stays ``running``); after a hub start, a box must have
been idle for the TTL while the hub ran (a hub that was down for a day does not reap every box
the moment it is back).

**Retention** (each ``off`` keeps for ever): the audit log, which is also the events timeline
(``--audit-retention``, 90 days); the metrics history (``--history-retention``, 7 days, also
pruned by the sampler, hub/history.py); MCP jobs that ended (``--job-retention``, 7 days: the
output, then the job); the event logs of workstreams closed for longer than
``--closed-ws-retention`` (30 days: events, inbox and approvals go, the workstream's row stays;
open workstreams are never touched). Deletes go in bounded batches (hub/store/retention.py), so
a big prune never holds the store's one thread for long, and at most
:data:`MAX_BATCHES_PER_SWEEP` per kind per sweep (a backlog drains over a few sweeps).

The clock and the sleep are injected: tests sweep without waiting. Pinned by
tests/hub/test_janitor.py (in-memory cluster, fake clock) and tests/test_janitor_e2e.py (real
hub, spoke and Docker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hub.boxes import BoxService
from hub.registry import Registry
from hub.store import Store
from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.janitor")

DAY = 86400.0
MAX_BATCHES_PER_SWEEP = 200  # per kind of row: 200 x 1000 rows, then the next sweep goes on
REAP_PER_SWEEP = 100
RETRY_AFTER_SWEEPS = 10  # a box whose destroy failed is tried again after this many sweeps


@dataclass(frozen=True)
class JanitorConfig:
    """What the janitor does; each ``None`` turns that part off. Defaults are ``hub serve``'s."""

    box_idle_ttl_s: float | None = None
    audit_retention_s: float | None = 90 * DAY
    history_retention_s: float | None = 7 * DAY
    job_retention_s: float | None = 7 * DAY
    closed_ws_retention_s: float | None = 30 * DAY
    interval_s: float | None = None  # None: from the TTL (a quarter of it, 1-60 s), else 60 s
    batch: int = 1000

    def tick_s(self) -> float:
        """How often to sweep: often enough that a box is reaped within ~1.25 TTL."""
        if self.interval_s is not None:
            return self.interval_s
        if self.box_idle_ttl_s:
            return min(60.0, max(1.0, self.box_idle_ttl_s / 4))
        return 60.0


@dataclass
class Sweep:
    """What one sweep did (for logs and tests)."""

    reaped: list[str] = field(default_factory=list)
    pruned: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.reaped) or any(self.pruned.values())


def human(seconds: float) -> str:
    """``90`` → ``1m30s``, ``90000`` → ``1d1h``: durations in audit details and logs."""
    s = int(seconds)
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "m"), (s % 60, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return "".join(shown[:2]) or "0s"


class Janitor:
    """Reaps idle boxes and prunes what is past its retention, every :meth:`JanitorConfig.tick_s`."""

    def __init__(self, store: Store, registry: Registry, boxes: BoxService,
                 config: JanitorConfig, *,
                 job_running: Callable[[str], bool] = lambda _job_id: False,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.store, self.registry, self.boxes = store, registry, boxes
        self.config = config
        self.job_running = job_running
        self.clock = clock or store.clock  # wall time: what box and audit rows are stamped with
        self.sleep = sleep
        self.started_at = self.clock()
        self._retry_at: dict[str, float] = {}  # box id -> when a failed destroy may be retried
        self._task: asyncio.Task[None] | None = None
        # Whether this hub sweeps: the cluster node's leader lease (hub/cluster/node.py,
        # set in hub/app.py); a hub alone always does.
        self.is_leader: Callable[[], bool] = lambda: True

    async def sweep_once(self) -> Sweep:
        """Reap, then prune; returns what was done. Pinned by tests/hub/test_janitor.py."""
        sweep = Sweep(reaped=await self.reap_idle_boxes())
        sweep.pruned = await self.apply_retention()
        if sweep:
            pruned = ", ".join(f"{n} {kind}" for kind, n in sweep.pruned.items() if n)
            log.info("janitor: reaped %d idle box(es)%s", len(sweep.reaped),
                     f"; pruned {pruned}" if pruned else "")
        return sweep

    # ---------------------------------------------------------------------- idle boxes
    async def reap_idle_boxes(self) -> list[str]:
        """Destroy the boxes idle past the TTL; their ids. Pinned by
        tests/hub/test_janitor.py::test_activity_keeps_a_box_and_idleness_reaps_it,
        ::test_a_box_busy_past_the_ttl_is_kept, ::test_an_open_workstreams_box_is_never_reaped
        and ::test_a_box_on_an_offline_spoke_waits_for_it."""
        # The store then shows every activity (flushed also with the TTL off: the activity is
        # recorded all the same, and memory holds only the last few seconds of it).
        await self.boxes.activity.flush()
        ttl = self.config.box_idle_ttl_s
        if not ttl:
            return []
        now = self.clock()
        cutoff = now - ttl
        if cutoff < self.started_at:  # idle for the TTL while this hub ran, not while it was down
            return []
        reaped: list[str] = []
        for box in await self.store.idle_boxes(cutoff, limit=REAP_PER_SWEEP):
            box_id = box["id"]
            recent = self.boxes.activity.unwritten(box_id)
            if self.boxes.activity.busy(box_id) or (recent is not None and recent >= cutoff):
                continue
            if self.registry.live(box["spoke"]) is None or self._retry_at.get(box_id, 0) > now:
                continue  # offline: its spoke reconciles it when it is back; reaped after that
            idle_for = now - (box["last_active_at"] or box["created_at"])
            try:
                await self.boxes.destroy(box_id, reason=f"idle for {human(idle_for)} "
                                                        f"(janitor: --box-idle-ttl {human(ttl)})")
            except RemoteError as err:
                if err.code is ErrorCode.UNAVAILABLE:
                    continue  # the spoke went away meanwhile (or the hub is stopping)
                log.warning("janitor: could not reap idle box %s on %s: %s", box_id,
                            box["spoke"], err)
                self._retry_at[box_id] = now + RETRY_AFTER_SWEEPS * self.config.tick_s()
                continue
            self._retry_at.pop(box_id, None)
            reaped.append(box_id)
        return reaped

    # ------------------------------------------------------------------------ retention
    async def _drain(self, prune: Callable[[], Awaitable[int]]) -> int:
        """Call ``prune`` (one bounded batch) until it returns less than a batch."""
        total = 0
        for _ in range(MAX_BATCHES_PER_SWEEP):
            n = await prune()
            total += n
            if n < self.config.batch:
                break
        return total

    async def apply_retention(self) -> dict[str, int]:
        """Prune each kind of row past its retention; rows deleted by kind. Pinned by
        tests/hub/test_janitor.py::test_the_audit_log_is_pruned_in_batches,
        ::test_the_metrics_history_is_pruned_in_batches,
        ::test_output_of_ended_jobs_is_pruned_running_ones_kept and
        ::test_closed_workstreams_lose_their_event_logs_open_ones_never."""
        c, now, out = self.config, self.clock(), {}
        if c.audit_retention_s:
            before = now - c.audit_retention_s
            out["audit rows"] = await self._drain(lambda: self.store.prune_audit(before, c.batch))
        if c.history_retention_s:
            before = now - c.history_retention_s
            out["history samples"] = await self._drain(
                lambda: self.store.history_prune(before, c.batch))
        if c.job_retention_s:
            out["job rows"] = await self._prune_jobs(now - c.job_retention_s)
        if c.closed_ws_retention_s:
            out["workstream event rows"] = await self._prune_workstreams(
                now - c.closed_ws_retention_s)
        return out

    async def _prune_jobs(self, before: float) -> int:
        """Ended jobs' output, then the jobs; also jobs still marked running that no task of
        this process runs (left by a hub that stopped mid-job)."""
        ids = await self.store.ended_jobs(before)
        ids += [j for j in await self.store.abandoned_jobs(before) if not self.job_running(j)]
        total, batches = 0, 0
        for job_id in ids:
            gone = False
            while not gone and batches < MAX_BATCHES_PER_SWEEP:
                n, gone = await self.store.prune_job(job_id, self.config.batch)
                total, batches = total + n, batches + 1
        return total

    async def _prune_workstreams(self, before: float) -> int:
        total, batches = 0, 0
        for ws_id in await self.store.closed_workstreams(before):
            done = False
            while not done and batches < MAX_BATCHES_PER_SWEEP:
                n, done = await self.store.prune_workstream_events(ws_id, before, self.config.batch)
                total, batches = total + n, batches + 1
        return total

    # -------------------------------------------------------------------------- the task
    async def run(self) -> None:
        """Sweep every tick until cancelled; a failed sweep is logged, not fatal. Pinned by
        tests/hub/test_janitor.py::test_the_loop_sweeps_every_tick_and_survives_errors."""
        while True:
            try:
                if self.is_leader():  # one janitor for the cluster (hub/cluster/node.py)
                    await self.sweep_once()
            except RemoteError as err:
                if err.code is ErrorCode.UNAVAILABLE:  # only the store's, at close: the hub stops
                    return
                log.warning("janitor sweep failed: %s", err)
            except Exception:
                log.exception("janitor sweep failed")
            await self.sleep(self.config.tick_s())


    def start(self) -> None:
        self.started_at = self.clock()
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
