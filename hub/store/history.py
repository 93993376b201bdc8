"""The hub's metrics history (migration 6): samples in, downsampled ranges out.

The sampler (hub/history.py) writes one row per series per sample, at whole seconds, and
prunes what is older than the retention. A range is read already downsampled, in SQL, so a
7-day chart never moves 60 000 rows per series into Python: each row falls in bucket
``(ts - start) / step`` — integer division of integers, the same on SQLite and PostgreSQL,
which is why timestamps are stored whole — and every bucket yields its average, maximum and
sum; :func:`aggregate_of` picks which one a series shows.

Also the snapshot the sampler takes of the tables it counts (workstreams by state, live boxes,
tokens used), in one read. Portable SQL through the store's transaction API (see
hub/store/engine.py). Pinned by tests/hub/test_fleet_memory.py (sampling, pruning,
downsampling with a fake clock) and tests/test_fleet_api.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.store.base import StoreBase
from hub.store.boxes import LIVE_BOX_STATES
from hub.store.engine import Reader, Tx

_LIVE = ", ".join(f"'{s}'" for s in LIVE_BOX_STATES)


def aggregate_of(series: str) -> str:
    """How a bucket of ``series`` is summarised: ``max`` for latencies (a slow spell must not
    be averaged away), ``sum`` for token counts (each sample counts the tokens used since the
    one before), ``avg`` for everything else (counts of spokes, workstreams, boxes …).
    Pinned by tests/hub/test_fleet_memory.py::test_history_is_downsampled_per_bucket."""
    if series.startswith("latency."):
        return "max"
    if series.startswith("tokens."):
        return "sum"
    return "avg"


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    """``[prefix, upper)``: the names starting with ``prefix``, as a range an index can use
    (no LIKE, whose ``_`` and ``%`` would need escaping)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


class HistoryTables(StoreBase):
    """The ``history`` table: ``(series, ts, value)``, keyed by series and time."""

    async def history_add(self, ts: int, values: dict[str, float]) -> None:
        """One sample of every series at ``ts`` (whole seconds); a second sample in the same
        second overwrites the first. Pinned by tests/hub/test_fleet_memory.py::
        test_the_sampler_writes_and_prunes."""
        rows = [{"series": name, "ts": ts, "value": float(value)} for name, value in values.items()]

        def run(tx: Tx) -> None:
            for row in rows:
                tx.upsert("history", row, ("series", "ts"))

        await self.transaction(run)

    async def history_prune(self, before: float, batch: int = 10_000) -> int:
        """Drop the oldest samples older than ``before``: about ``batch`` rows (the rows of
        one timestamp go together, so a few more); returns how many went. Bounded, so a hub back
        after a long stop, or a shorter ``--history-retention``, never holds the store's
        thread for one huge delete: the janitor (hub/janitor.py) calls it until it returns
        less than a batch. Pinned by tests/hub/test_fleet_memory.py::
        test_the_sampler_writes_and_prunes and tests/hub/test_janitor.py::
        test_the_metrics_history_is_pruned_in_batches."""

        def run(tx: Tx) -> int:
            last = tx.one("SELECT ts FROM history WHERE ts < ? ORDER BY ts LIMIT 1 OFFSET ?",
                          (before, max(0, batch - 1)))
            if last is None:  # fewer than a batch: all of them
                return tx.execute("DELETE FROM history WHERE ts < ?", (before,))
            return tx.execute("DELETE FROM history WHERE ts <= ?", (last["ts"],))

        return await self.transaction(run)

    async def history_range(self, start: int, end: int, step: int, names: Sequence[str] = (),
                            prefixes: Sequence[str] = ()) -> dict[str, list[list[float]]]:
        """``{series: [[bucket_start, value], …]}`` for samples in ``[start, end]``, in buckets
        of ``step`` seconds starting at ``start`` (every series, or those named or starting
        with one of ``prefixes``); buckets without samples are left out. Pinned by
        tests/hub/test_fleet_memory.py::test_history_is_downsampled_per_bucket."""
        where: list[str] = ["ts >= ?", "ts <= ?"]
        params: list[Any] = [start, end]
        wanted: list[str] = []
        if names:
            wanted.append(f"series IN ({', '.join('?' for _ in names)})")
            params += list(names)
        for prefix in prefixes:
            low, high = _prefix_bounds(prefix)
            wanted.append("(series >= ? AND series < ?)")
            params += [low, high]
        if wanted:
            where.append("(" + " OR ".join(wanted) + ")")
        sql = ("SELECT series, (CAST(ts AS BIGINT) - ?) / ? AS bucket, avg(value) AS avg_v, "
               "max(value) AS max_v, sum(value) AS sum_v FROM history "
               f"WHERE {' AND '.join(where)} GROUP BY series, bucket ORDER BY series, bucket")
        rows = await self.read(lambda r: r.rows(sql, (start, step, *params)))
        out: dict[str, list[list[float]]] = {}
        for row in rows:
            column = {"max": "max_v", "sum": "sum_v"}.get(aggregate_of(row["series"]), "avg_v")
            value = round(float(row[column]), 6)
            out.setdefault(row["series"], []).append([start + int(row["bucket"]) * step, value])
        return out

    async def history_snapshot(self, since: float, until: float,
                               open_states: Sequence[str]) -> dict[str, Any]:
        """What the sampler counts from the tables, in one snapshot: workstreams per open
        state, live boxes, and the tokens used in ``(since, until]`` (from ``usage``).
        Pinned by tests/hub/test_fleet_memory.py::test_the_sampler_writes_and_prunes and
        tests/test_fleet_api.py::test_history_after_a_few_samples."""
        states = tuple(open_states)
        ws_sql = (f"SELECT state, count(*) AS n FROM workstreams WHERE state IN "
                  f"({', '.join('?' for _ in states)}) GROUP BY state")
        box_sql = f"SELECT count(*) AS n FROM boxes WHERE state IN ({_LIVE})"
        use_sql = ("SELECT sum(input_tokens) AS tin, sum(output_tokens) AS tout FROM usage "
                   "WHERE ts > ? AND ts <= ?")

        def run(r: Reader) -> dict[str, Any]:
            boxes = r.one(box_sql)
            used = r.one(use_sql, (since, until))
            return {
                "workstreams": {row["state"]: int(row["n"]) for row in r.rows(ws_sql, states)},
                "boxes": int(boxes["n"]) if boxes else 0,
                "input_tokens": int((used or {}).get("tin") or 0),
                "output_tokens": int((used or {}).get("tout") or 0),
            }

        return await self.read(run)


__all__ = ["HistoryTables", "aggregate_of"]
