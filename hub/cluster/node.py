"""This hub as one member of a cluster: its beat, the leader lease, the view of the others.

Every hub runs a :class:`ClusterNode`, alone or not (a hub on SQLite is a cluster of one, so
the same code runs everywhere and the tests of one hub exercise it). Every ``beat_s`` it:

1. renews its own row (``hub_nodes.seen_at``): that row is the lease on every spoke link it
   holds, so a hub killed outright loses them all when the row is ``ttl_s`` old;
2. takes or renews the ``leader`` lease (``ttl_s``): the leader alone runs the janitor, alert
   evaluation, history sampling and queue dispatch (each asks :meth:`is_leader`), and when it
   dies another hub takes the lease within ``ttl_s + beat_s``;
3. as leader, sweeps dead hubs: their spokes are recorded lost and ``on_spokes_lost`` is told
   (the workstreams' grace, hub/workstreams/moves.py);
4. refreshes its view of the spokes other hubs hold (``on_holders``: the registry's cache,
   which routing and forwarding read).

Wake-ups: every hub subscribes to the store's notifications (hub/store/engine.py: PostgreSQL
NOTIFY, or in-process on SQLite) and hands each topic to the handler registered for its
prefix (``spoke:``, ``ws:``, ``audit``, ``kick``). A wake-up is a hint to re-read the store;
nothing is carried in it. Pinned by tests/hub/test_cluster_node.py and tests/test_multihub.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from hub.store import Holder, Store
from protocol.errors import RemoteError

log = logging.getLogger("spokehub.hub.cluster")

BEAT_S = 2.0
TTL_S = 6.0
LEADER = "leader"

Handler = Callable[[str], None]


def new_hub_id() -> str:
    return "hub-" + secrets.token_hex(4)


class ClusterNode:
    """One hub's membership. ``hub_id`` names this process (a restart is a new member);
    ``url`` is how the other hubs reach it (``hub serve --peer-url``)."""

    def __init__(self, store: Store, url: str, version: str, *, hub_id: str | None = None,
                 beat_s: float = BEAT_S, ttl_s: float = TTL_S, alone: bool = False) -> None:
        self.store, self.url, self.version = store, url, version
        self.hub_id = hub_id or new_hub_id()
        self.beat_s, self.ttl_s = beat_s, ttl_s
        # On its data dir's own SQLite file (which the run lock keeps to one hub process),
        # any other member is a predecessor, retired at the start whatever its address.
        self.alone = alone
        self.leader = False
        self.secret = ""  # the cluster's hub-to-hub secret, read at start
        self.on_holders: list[Callable[[list[Holder]], None]] = []
        self.on_spokes_lost: list[Callable[[list[str]], Awaitable[None]]] = []
        self.on_leadership: list[Callable[[bool], None]] = []
        self._handlers: dict[str, Handler] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sends: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ questions
    def is_leader(self) -> bool:
        """Whether this hub holds the leader lease (as of its last beat)."""
        return self.leader

    # ------------------------------------------------------------------ wake-ups
    def on(self, prefix: str, handler: Handler) -> None:
        """Call ``handler(rest)`` for every wake-up topic ``prefix + rest``."""
        self._handlers[prefix] = handler

    def deliver(self, topic: str) -> None:
        """A notification from the store (on the event loop). Pinned by
        tests/hub/test_cluster_node.py::test_wakeups_reach_their_handlers."""
        for prefix, handler in self._handlers.items():
            if topic.startswith(prefix):
                try:
                    handler(topic[len(prefix):])
                except Exception:
                    log.exception("wake-up %r failed", topic)
                return

    def publish(self, topic: str) -> None:
        """Wake every hub's handler of ``topic`` (this one's too), in a task of its own: a
        hint, so a failure is only logged."""
        async def send() -> None:
            try:
                await self.store.transaction(lambda tx: tx.notify(topic))
            except RemoteError as err:
                log.debug("wake-up %r not sent: %s", topic, err)

        task = asyncio.get_running_loop().create_task(send())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Join: the first beat (so the row exists before any spoke link is taken), the
        secret, the subscription, then the beat loop."""
        self._loop = asyncio.get_running_loop()
        self.store.engine.subscribe(self.deliver)
        self.secret = await self.store.cluster_secret("peer")
        # The hub this process replaces at the same address (a restart, maybe after a kill)
        # is gone for sure: its spokes are lost now, and its leases free, not in ``ttl_s``.
        retired = await self.store.sweep_dead_hubs(self.ttl_s, url=self.url, keep=self.hub_id,
                                                   alone=self.alone)
        if retired:
            for hook in self.on_spokes_lost:
                await hook(retired)
        await self.beat()
        self._task = self._loop.create_task(self._run())
        log.info("cluster: this hub is %s (%s)%s", self.hub_id, self.url,
                 ", the leader" if self.leader else "")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_leader(False)
        with contextlib.suppress(RemoteError):
            await self.store.node_leave(self.hub_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.beat_s)
            try:
                await self.beat()
            except RemoteError as err:  # the store is closing: the hub is stopping
                log.debug("cluster beat skipped: %s", err)
            except Exception:
                log.exception("cluster beat failed")

    async def beat(self) -> None:
        """One beat (see the module docstring). Pinned by
        tests/hub/test_cluster_node.py::test_the_leader_lease_moves_when_its_holder_dies."""
        await self.store.node_beat(self.hub_id, self.url, self.version)
        self._set_leader(await self.store.lease_take(LEADER, self.hub_id, self.ttl_s))
        if self.leader:
            lost = await self.store.sweep_dead_hubs(self.ttl_s)
            if lost:
                log.warning("cluster: %d spoke(s) lost with their hub: %s", len(lost),
                            ", ".join(lost[:20]))
                for hook in self.on_spokes_lost:
                    await hook(lost)
        holders = [h for h in await self.store.live_holders(self.ttl_s) if h.hub_id != self.hub_id]
        for listener in self.on_holders:
            listener(holders)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.leader:
            self.leader = leader
            log.info("cluster: %s %s the leader", self.hub_id, "is now" if leader else "is no longer")
            for listener in self.on_leadership:
                listener(leader)

    async def status(self) -> dict[str, Any]:
        """``GET /api/cluster``: the hubs, the leader, which hub holds which spoke."""
        nodes = await self.store.nodes()
        leader = await self.store.lease_holder(LEADER)
        now = self.store.clock()
        holders = await self.store.live_holders(self.ttl_s)
        return {
            "hub": self.hub_id,
            "leader": leader,
            "hubs": [{"id": n["id"], "url": n["url"], "version": n["version"],
                      "started_at": n["started_at"], "seen_at": n["seen_at"],
                      "live": n["seen_at"] > now - self.ttl_s, "leader": n["id"] == leader,
                      "spokes": int(n["spokes"])} for n in nodes],
            "holders": {h.spoke: h.hub_id for h in holders},
        }
