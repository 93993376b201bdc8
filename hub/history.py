"""The hub's metrics history: one sampler task, and ``GET /api/history``.

Every ``interval_s`` (``hub serve --history-interval``, default 10 s) the sampler writes one
row per series into the ``history`` table (hub/store/history.py) and drops rows older than
``retention_s`` (``--history-retention``, default 7 days). Series:

- ``spokes.connected|stale|lost|left|revoked`` — enrolled spokes by state (hub/registry.py);
- ``workstreams.<state>`` for every open state, and ``queue.depth`` (queued workstreams);
- ``boxes.live``, ``execs.running`` (execs and exec jobs in flight);
- ``tokens.input``, ``tokens.output`` — model tokens used since the previous sample;
- ``latency.p50|p95|p99.<verb>`` — seconds, over the calls that ended since the previous
  sample, on every live link (their windows, hub/latency.py); absent when a verb had no call.

Ranges are downsampled in the store to at most ~300 points per series: a bucket shows the
average of its samples, the maximum for latencies, the sum for tokens
(:func:`hub.store.history.aggregate_of`). The clock and the sleep are injected, so tests run
the sampler without waiting. Pinned by tests/hub/test_fleet_memory.py and
tests/test_fleet_api.py::test_history_after_a_few_samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hub.boxes import BoxService
from hub.latency import percentile
from hub.openapi import Param, Reply, operation
from hub.openapi.models import fleet as m
from hub.registry import Registry
from hub.store import Store
from hub.workstreams.store import OPEN_STATES
from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.history")

SPOKE_STATES = ("connected", "stale", "lost", "left", "revoked")
RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
MAX_POINTS = 300
SLICE_BUCKETS = 10  # buckets read per statement (see HistoryApi)
CACHED_QUERIES = 16
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


class HistorySampler:
    """Samples the hub into the history table; :meth:`lifecycle` runs it with the hub."""

    def __init__(self, store: Store, registry: Registry, boxes: BoxService, *,
                 interval_s: float = 10.0, retention_s: float = 7 * 86400.0,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if interval_s < 1.0:
            raise ValueError("the history interval is at least 1 s (samples are whole seconds)")
        self.store, self.registry, self.boxes = store, registry, boxes
        self.interval_s, self.retention_s = interval_s, retention_s
        self.clock = clock or store.clock  # wall time: what the rows are stamped with
        self.sleep = sleep
        self._last_wall: float | None = None
        self._last_link_t: float | None = None  # the registry's clock at the previous sample
        self._task: asyncio.Task[None] | None = None
        # Whether this hub samples: the cluster node's leader lease (hub/cluster/node.py,
        # set in hub/app.py); a hub alone always does.
        self.is_leader: Callable[[], bool] = lambda: True
        # Told every sample's values (the Prometheus gauges, the alert rules), so they need
        # no query of their own. Plain functions: called on the sampler's task.
        self.on_sample: list[Callable[[dict[str, float]], None]] = []

    async def sample_once(self) -> dict[str, float]:
        """Take one sample, write it, prune old rows; returns what was written. Pinned by
        tests/hub/test_fleet_memory.py::test_the_sampler_writes_and_prunes."""
        now = self.clock()
        link_now = self.registry.clock()
        since = self._last_wall if self._last_wall is not None else now - self.interval_s
        link_since = self._last_link_t if self._last_link_t is not None else link_now - self.interval_s
        values: dict[str, float] = {f"spokes.{s}": 0.0 for s in SPOKE_STATES}
        for spoke in await self.registry.spoke_summaries():
            values[f"spokes.{spoke['state']}"] = values.get(f"spokes.{spoke['state']}", 0.0) + 1
        snap = await self.store.history_snapshot(since, now, OPEN_STATES)
        for state in OPEN_STATES:
            values[f"workstreams.{state}"] = float(snap["workstreams"].get(state, 0))
        values["queue.depth"] = values["workstreams.queued"]
        values["boxes.live"] = float(snap["boxes"])
        values["execs.running"] = float(len(self.boxes.execs))
        values["tokens.input"] = float(snap["input_tokens"])
        values["tokens.output"] = float(snap["output_tokens"])
        for verb, durations in self.registry.latency_since(link_since).items():
            for name, q in QUANTILES:
                values[f"latency.{name}.{verb}"] = round(percentile(durations, q), 6)
        for hook in self.on_sample:
            hook(values)
        await self.store.history_add(int(now), values)  # whole seconds, never in the future
        await self.store.history_prune(now - self.retention_s)
        self._last_wall, self._last_link_t = now, link_now
        return values


    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled; a failed sample is logged, not fatal.
        Pinned by tests/hub/test_fleet_memory.py::test_the_sampler_writes_and_prunes."""
        while True:
            try:
                if self.is_leader():  # one sampler for the cluster (hub/cluster/node.py)
                    await self.sample_once()
            except RemoteError as err:
                if err.code is ErrorCode.UNAVAILABLE:  # the store is closing: the hub stops
                    return
                log.warning("history sample failed: %s", err)
            except Exception:
                log.exception("history sample failed")
            await self.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def step_for(range_s: int, interval_s: float) -> int:
    """Bucket width: at most :data:`MAX_POINTS` buckets, never finer than the sampling.
    Pinned by tests/hub/test_fleet_memory.py::test_history_is_downsampled_per_bucket."""
    return max(int(math.ceil(interval_s)), int(math.ceil(range_s / MAX_POINTS)))


@dataclass
class _Done:
    """The buckets of one (range, series) query that can no longer change: all before ``until``."""

    step: int
    until: int
    points: dict[str, list[list[float]]] = field(default_factory=dict)


class HistoryApi:
    """``GET /api/history?range=1h|24h|7d[&series=a,b,prefix.*]``.

    A 7-day range of every series is millions of rows. Reading them in one statement would
    hold the store's one worker (and every workstream event behind it) for seconds, so a range
    is read in slices of :data:`SLICE_BUCKETS` buckets, and the buckets that are complete are
    kept: the next read of the same range only reads what came since. Bounded: the last
    :data:`CACHED_QUERIES` distinct queries."""

    def __init__(self, store: Store, interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.interval_s, self.clock = store, interval_s, clock
        self._done: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Done] = {}

    async def _points(self, key: tuple[str, tuple[str, ...], tuple[str, ...]], start: int,
                      end: int, step: int) -> dict[str, list[list[float]]]:
        _range, names, prefixes = key
        done = self._done.pop(key, None)
        if done is None or done.step != step or done.until < start:
            done = _Done(step=step, until=start)
        points = {name: [pt for pt in pts if pt[0] >= start] for name, pts in done.points.items()}
        fresh: dict[str, list[list[float]]] = {}
        at = done.until
        while at <= end:  # slices aligned to the step, so their buckets are the range's
            upto = min(end, at + SLICE_BUCKETS * step - 1)
            for name, pts in (await self.store.history_range(at, upto, step, names, prefixes)).items():
                fresh.setdefault(name, []).extend(pts)
            at = upto + 1
        # Samples are stamped when taken and written just after: keep a margin before "done".
        until = max(done.until, int(end - 2 * self.interval_s - 1) // step * step)
        complete = {name: list(pts) for name, pts in points.items()}
        for name, pts in fresh.items():
            complete.setdefault(name, []).extend(pt for pt in pts if pt[0] + step <= until)
            points.setdefault(name, []).extend(pts)
        self._done[key] = _Done(step=step, until=until, points=complete)
        while len(self._done) > CACHED_QUERIES:
            self._done.pop(next(iter(self._done)))
        return {name: pts for name, pts in points.items() if pts}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/history", self.history)]

    async def query(self, range_name: str, series: str = "") -> dict[str, Any]:
        """The answer of the route: ``{"range", "from", "to", "step_s", "series"}``. Buckets
        are aligned to multiples of the step, so successive reads line up. Pinned by
        tests/hub/test_fleet_memory.py::test_history_is_downsampled_per_bucket."""
        if range_name not in RANGES:
            raise RemoteError(ErrorCode.INVALID,
                              f"range must be one of {', '.join(RANGES)}, got {range_name[:20]!r}")
        names: list[str] = []
        prefixes: list[str] = []
        for item in (part.strip() for part in series.split(",")):
            if not item:
                continue
            if len(item) > 200 or len(names) + len(prefixes) >= 100:
                raise RemoteError(ErrorCode.INVALID, "series: at most 100 names of 200 characters")
            if item.endswith("*"):
                if item.rstrip("*"):
                    prefixes.append(item.rstrip("*"))
            else:
                names.append(item)
        range_s = RANGES[range_name]
        step = step_for(range_s, self.interval_s)
        end = int(self.clock())
        start = (end - range_s) // step * step
        points = await self._points((range_name, tuple(names), tuple(prefixes)), start, end, step)
        for name in names:
            points.setdefault(name, [])
        return {"range": range_name, "from": start, "to": end, "step_s": step, "series": points}

    @operation("The metrics history", tag="history", query=(
        Param("range", {"type": "string", "enum": list(RANGES)}, "default 1h"),
        Param("series", description="comma-separated names, and prefixes ending in `*`; "
              "default: every series")),
        replies=(Reply(200, "points per series, at most ~300 each", m.History),),
        errors=(400,))
    async def history(self, request: web.Request) -> web.Response:
        return web.json_response(await self.query(request.query.get("range", "1h"),
                                                  request.query.get("series", "")))
