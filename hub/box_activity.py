"""When each box was last used, for the janitor's idle TTL (hub/janitor.py).

"Used" is what the hub runs on a box for a caller: an exec (while it runs, and when it ends)
and a file transfer. Reading a box's logs or stats is not use: a dashboard polling stats would
otherwise keep every box alive for ever. A workstream's box is in use while its workstream is
open, whatever happens in it (hub/store/boxes.py ``idle_boxes`` leaves those out).

Activity is kept in memory at once and written to the store (``boxes.last_active_at``)
coalesced: at most once per ``write_every_s`` per box while it is busy, and all of it when the
janitor :meth:`flush`-es before it looks for idle boxes. So a chatty box costs one write per
half minute, not two per exec, and what the store says after a hub restart is at most
``write_every_s`` old (an idle TTL is minutes or hours). A box with a verb in flight is
:meth:`busy` and never reaped, however long the verb runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

from hub.store import Store
from protocol.errors import RemoteError

log = logging.getLogger("spokehub.hub.box_activity")


class BoxActivity:
    """Busy boxes and recent activity, in memory; the store's copy written coalesced.
    Pinned by tests/hub/test_janitor.py::test_activity_keeps_a_box_and_idleness_reaps_it and
    ::test_a_box_busy_past_the_ttl_is_kept."""

    def __init__(self, store: Store, write_every_s: float = 30.0) -> None:
        self.store = store
        self.write_every_s = write_every_s
        self._busy: Counter[str] = Counter()
        self._pending: dict[str, float] = {}  # activity not yet in the store
        self._written: dict[str, float] = {}  # when each box's activity was last written

    def busy(self, box_id: str) -> bool:
        """Whether a verb runs on ``box_id`` now (an exec, a transfer)."""
        return self._busy[box_id] > 0

    def unwritten(self, box_id: str) -> float | None:
        """Activity on ``box_id`` that the store does not show yet, or None."""
        return self._pending.get(box_id)

    @contextlib.asynccontextmanager
    async def using(self, box_id: str) -> AsyncIterator[None]:
        """``async with activity.using(box_id):`` around a verb on the box: busy while the
        block runs, activity noted when it starts and when it ends."""
        self._busy[box_id] += 1
        try:
            await self._note(box_id)
            yield
        finally:
            self._busy[box_id] -= 1
            if self._busy[box_id] <= 0:
                del self._busy[box_id]
            await self._note(box_id)

    async def _note(self, box_id: str) -> None:
        now = self.store.clock()
        self._pending[box_id] = now
        if now - self._written.get(box_id, float("-inf")) >= self.write_every_s:
            await self._write({box_id: now})

    async def flush(self) -> None:
        """Write every pending activity in one transaction, and forget what the store now
        knows well enough (so memory holds only the last ``write_every_s`` of activity)."""
        await self._write(dict(self._pending))
        cutoff = self.store.clock() - self.write_every_s
        self._written = {b: t for b, t in self._written.items() if t > cutoff}

    async def _write(self, times: dict[str, float]) -> None:
        if not times:
            return
        for box_id, at in times.items():
            self._written[box_id] = at
            if self._pending.get(box_id) == at:
                del self._pending[box_id]
        # Shielded: a caller cancelled mid-exec still has its activity recorded. Never raises
        # but for a cancellation: a verb that ran is not failed because its activity could
        # not be written (kept in memory instead; the next write takes it).
        try:
            await asyncio.shield(self.store.touch_boxes(times))
        except BaseException as err:
            for box_id, at in times.items():
                self._pending.setdefault(box_id, at)
            if not isinstance(err, Exception):  # a cancellation (or an exit)
                raise
            if not isinstance(err, RemoteError):  # unavailable: the hub is stopping
                log.warning("could not record activity of %s", ", ".join(times), exc_info=True)
