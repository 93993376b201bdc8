"""Several hubs, one cluster (migration 12): which hubs run, which holds each spoke, leases.

- ``hub_nodes``: one row per running hub process (its id and the URL the other hubs reach it
  on), kept alive by the hub's beat (``seen_at``). A hub is *live* while ``seen_at`` is
  younger than the cluster's TTL: that is the lease on everything it holds, so a hub killed
  with ``kill -9`` loses all of its spokes at once, when its row goes stale, without one
  write per spoke.
- ``spoke_holders``: which hub holds each connected spoke's link, with what routing needs to
  know of a spoke another hub holds (labels, models, capacity, leaving) and the hash of the
  spoke's model-relay token (the relay is served by whichever hub the spoke's HTTP request
  reaches).
- ``leases``: named leases for the work only one hub may do (``leader``: the janitor,
  alerts, history sampling, queue dispatch), taken and renewed in a serializable transaction.
- ``cluster_settings``: the cluster's shared secret (hub-to-hub calls, preview links).

Every change a hub must react to at once is announced with ``tx.notify`` (``spoke:NAME``),
delivered to every hub after the commit (hub/store/engine.py). Pinned by
tests/hub/test_cluster_store.py (on SQLite and PostgreSQL) and tests/test_multihub.py.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hub.store.base import StoreBase
from hub.store.engine import Tx

_LIVE_HOLDERS = ("SELECT h.*, n.url AS hub_url FROM spoke_holders h JOIN hub_nodes n "
                 "ON n.id = h.hub_id WHERE n.seen_at > ?")


@dataclass(frozen=True)
class Holder:
    """A spoke's link as the cluster knows it: the hub holding it and what routing needs."""

    spoke: str
    hub_id: str
    hub_url: str
    labels: tuple[str, ...]
    models: tuple[str, ...]
    max_workstreams: int
    leaving: bool
    relay_token_hash: str

    @classmethod
    def of(cls, row: dict[str, Any]) -> Holder:
        return cls(spoke=row["spoke"], hub_id=row["hub_id"], hub_url=row["hub_url"],
                   labels=tuple(json.loads(row["labels"])), models=tuple(json.loads(row["models"])),
                   max_workstreams=int(row["max_workstreams"]), leaving=bool(row["leaving"]),
                   relay_token_hash=row["relay_token_hash"])


class ClusterTables(StoreBase):
    """``hub_nodes``, ``spoke_holders``, ``leases``, ``cluster_settings``."""

    # ------------------------------------------------------------------------- hubs
    async def node_beat(self, hub_id: str, url: str, version: str) -> None:
        """Register this hub, or renew its liveness: one row, one write per beat."""
        now = self.clock()

        def run(tx: Tx) -> None:
            if tx.execute("UPDATE hub_nodes SET seen_at=?, url=? WHERE id=?", (now, url, hub_id)) == 0:
                tx.insert("hub_nodes", {"id": hub_id, "url": url, "started_at": now,
                                        "seen_at": now, "version": version})

        await self.transaction(run)

    async def node_leave(self, hub_id: str) -> None:
        """A clean stop: the hub's row and its leases go at once (the others need not wait
        for them to expire). Its spokes' rows go as their links close."""

        def run(tx: Tx) -> None:
            tx.execute("DELETE FROM leases WHERE holder=?", (hub_id,))
            tx.execute("DELETE FROM mcp_sessions WHERE hub_id=?", (hub_id,))
            tx.execute("DELETE FROM hub_nodes WHERE id=?", (hub_id,))

        await self.transaction(run)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every hub row, with how many spokes each holds."""
        sql = ("SELECT n.*, (SELECT count(*) FROM spoke_holders h WHERE h.hub_id = n.id) AS spokes "
               "FROM hub_nodes n ORDER BY n.started_at, n.id")
        return await self.read(lambda r: r.rows(sql))

    # -------------------------------------------------------------------- holders
    def spoke_connected_writes(self, spoke: str, hub_id: str, *, labels: list[str],
                               models: list[str], version: str, max_workstreams: int,
                               relay_token_hash: str) -> Callable[[Tx], None]:
        """A connect's writes, for the transaction of its audit row (one round trip per
        connect, as before clusters: a reconnect storm of thousands of spokes): the spoke
        marked connected, and this hub its holder (another hub's older link to it closes when
        that hub hears ``spoke:NAME``). Pinned by tests/test_enrollment.py and
        tests/hub/test_cluster_node.py."""
        now = self.clock()
        holder = {"spoke": spoke, "hub_id": hub_id, "since": now, "labels": json.dumps(labels),
                  "models": json.dumps(models), "max_workstreams": max_workstreams,
                  "leaving": 0, "relay_token_hash": relay_token_hash}
        sets = {"connected": 1, "last_seen": now, "disconnect_reason": "", "state": "connected",
                "labels": json.dumps(labels), "version": version}

        def run(tx: Tx) -> None:
            tx.update("spokes", "name", spoke, sets)
            tx.upsert("spoke_holders", holder, ("spoke",))
            tx.notify(f"spoke:{spoke}")

        return run

    async def spoke_link_closed(self, spoke: str, hub_id: str, *, reason: str,
                                state: str) -> bool:
        """A link of ``spoke`` on ``hub_id`` closed, in one transaction: if this hub still
        held it (False: the spoke connected to another hub meanwhile, where it lives now),
        it is released and, unless revoked, recorded as gone (``state``: lost or left) with
        its audit row (the caller wakes this hub's audit readers). Pinned by tests/test_enrollment.py and tests/test_multihub.py."""
        now = self.clock()

        def run(tx: Tx) -> bool:
            if tx.execute("DELETE FROM spoke_holders WHERE spoke=? AND hub_id=?",
                          (spoke, hub_id)) != 1:
                return False
            if tx.execute("UPDATE spokes SET connected=0, last_seen=?, disconnect_reason=?, "
                          "state=? WHERE name=? AND revoked_at IS NULL",
                          (now, reason, state, spoke)) == 1:
                tx.insert("audit", {"ts": now, "kind": f"spoke.{state}", "subject": spoke,
                                    "detail": reason[:2000], "actor": "", "spoke": "",
                                    "result": ""})
                tx.notify("audit")
            return True

        return await self.transaction(run)

    async def holder_leaving(self, spoke: str, hub_id: str) -> None:
        await self.transaction(lambda tx: tx.execute(
            "UPDATE spoke_holders SET leaving=1 WHERE spoke=? AND hub_id=?", (spoke, hub_id)))

    async def holder_of(self, spoke: str, ttl_s: float) -> Holder | None:
        """The live hub holding ``spoke``, or None (not connected, or its hub is dead)."""
        since = self.clock() - ttl_s
        row = await self.read(lambda r: r.one(_LIVE_HOLDERS + " AND h.spoke=?", (since, spoke)))
        return None if row is None else Holder.of(row)

    async def holder_by_relay_token(self, token_hash: str, ttl_s: float) -> Holder | None:
        since = self.clock() - ttl_s
        row = await self.read(lambda r: r.one(_LIVE_HOLDERS + " AND h.relay_token_hash=?",
                                              (since, token_hash)))
        return None if row is None else Holder.of(row)

    async def live_holders(self, ttl_s: float) -> list[Holder]:
        """Every spoke held by a live hub (routing's view of the whole cluster)."""
        since = self.clock() - ttl_s
        rows = await self.read(lambda r: r.rows(_LIVE_HOLDERS + " ORDER BY h.spoke", (since,)))
        return [Holder.of(row) for row in rows]

    async def sweep_dead_hubs(self, ttl_s: float, *, url: str | None = None,
                              keep: str = "", alone: bool = False) -> list[str]:
        """The leader's chore: hubs silent past the TTL are dead — and, given ``url``, every
        hub at that address but ``keep`` (a hub starting there retires the process it
        replaces: two cannot listen on one address), or with ``alone`` every hub but
        ``keep`` (a hub on its data dir's own SQLite file, which its run lock keeps to one
        process, knows any other row is a predecessor's). Their rows, holder rows and leases go,
        and their spokes are recorded ``lost`` (a spoke already held by a live hub has no row
        of theirs left). Returns the spokes lost. Pinned by
        tests/hub/test_cluster_node.py::test_a_dead_hubs_spokes_are_lost_once and
        ::test_a_restarted_hub_retires_its_predecessor_at_once."""
        since = self.clock() - ttl_s
        now = self.clock()

        def run(tx: Tx) -> list[str]:
            dead = [r["id"] for r in tx.rows("SELECT id FROM hub_nodes WHERE seen_at <= ?", (since,))]
            if url is not None or alone:
                dead += [r["id"] for r in tx.rows(
                    "SELECT id FROM hub_nodes WHERE (url=? OR ?=1) AND id<>? AND seen_at > ?",
                    (url or "", 1 if alone else 0, keep, since))]
            lost: list[str] = []
            for hub_id in dead:
                for row in tx.rows("SELECT spoke FROM spoke_holders WHERE hub_id=?", (hub_id,)):
                    lost.append(row["spoke"])
                    tx.execute("UPDATE spokes SET connected=0, state='lost', last_seen=?, "
                               "disconnect_reason='its hub stopped answering' "
                               "WHERE name=? AND revoked_at IS NULL", (now, row["spoke"]))
                    tx.notify(f"spoke:{row['spoke']}")
                tx.execute("DELETE FROM spoke_holders WHERE hub_id=?", (hub_id,))
                tx.execute("DELETE FROM leases WHERE holder=?", (hub_id,))
                tx.execute("DELETE FROM mcp_sessions WHERE hub_id=?", (hub_id,))
                tx.execute("DELETE FROM hub_nodes WHERE id=?", (hub_id,))
            return lost

        return await self.transaction(run)

    async def mark_unheld_disconnected(self, ttl_s: float) -> None:
        """At hub start: spokes marked connected whose link no live hub holds were left by a
        hub that stopped without closing them (killed): ``lost``, reason ``hub restarted``.
        Spokes that another live hub holds stay connected. Pinned by
        tests/test_enrollment.py::test_reconnect_after_hub_restart_keeps_everything and
        tests/hub/test_cluster_store.py."""
        since = self.clock() - ttl_s
        sql = ("UPDATE spokes SET connected=0, disconnect_reason='hub restarted', state='lost' "
               "WHERE connected=1 AND name NOT IN (SELECT h.spoke FROM spoke_holders h "
               "JOIN hub_nodes n ON n.id = h.hub_id WHERE n.seen_at > ?)")
        await self.transaction(lambda tx: tx.execute(sql, (since,)))

    # --------------------------------------------------------------------- leases
    async def lease_take(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew lease ``name`` for ``holder`` until now + ``ttl_s``: True if held.
        Taken only when free, expired, or already ours (serializable: one winner).
        Pinned by tests/hub/test_cluster_store.py::test_one_leader_at_a_time."""
        now = self.clock()

        def run(tx: Tx) -> bool:
            row = tx.one("SELECT holder, expires_at FROM leases WHERE name=?", (name,))
            if row is None:
                tx.insert("leases", {"name": name, "holder": holder, "expires_at": now + ttl_s})
                return True
            if row["holder"] != holder and float(row["expires_at"]) > now:
                return False
            tx.execute("UPDATE leases SET holder=?, expires_at=? WHERE name=?",
                       (holder, now + ttl_s, name))
            return True

        return await self.transaction(run)

    async def lease_holder(self, name: str) -> str | None:
        now = self.clock()
        row = await self.read(lambda r: r.one(
            "SELECT holder FROM leases WHERE name=? AND expires_at > ?", (name, now)))
        return None if row is None else str(row["holder"])

    # --------------------------------------------------------------- MCP sessions
    async def mcp_session_add(self, session_id: str, hub_id: str) -> None:
        row = {"id": session_id, "hub_id": hub_id, "created_at": self.clock()}
        await self.transaction(lambda tx: tx.upsert("mcp_sessions", row, ("id",)))

    async def mcp_session_drop(self, session_id: str) -> None:
        await self.transaction(lambda tx: tx.execute("DELETE FROM mcp_sessions WHERE id=?",
                                                     (session_id,)))

    async def mcp_session_hub(self, session_id: str, ttl_s: float) -> tuple[str, str] | None:
        """``(hub id, its URL)`` of the live hub holding MCP session ``session_id``, or None."""
        since = self.clock() - ttl_s
        row = await self.read(lambda r: r.one(
            "SELECT s.hub_id, n.url FROM mcp_sessions s JOIN hub_nodes n ON n.id = s.hub_id "
            "WHERE s.id=? AND n.seen_at > ?", (session_id, since)))
        return None if row is None else (str(row["hub_id"]), str(row["url"]))

    # ------------------------------------------------------------------- settings
    async def setting(self, name: str) -> str | None:
        """A cluster-wide value (``cluster_settings``), or None."""
        row = await self.read(lambda r: r.one("SELECT value FROM cluster_settings WHERE name=?",
                                              (name,)))
        return None if row is None else str(row["value"])

    async def set_setting(self, name: str, value: str) -> None:
        await self.transaction(lambda tx: tx.upsert("cluster_settings",
                                                    {"name": name, "value": value}, ("name",)))

    # -------------------------------------------------------------------- secrets
    async def cluster_secret(self, name: str) -> str:
        """The cluster-wide secret ``name``, made on first use (every hub reads the same)."""
        fresh = secrets.token_urlsafe(32)

        def run(tx: Tx) -> str:
            row = tx.one("SELECT value FROM cluster_settings WHERE name=?", (name,))
            if row is not None:
                return str(row["value"])
            tx.insert("cluster_settings", {"name": name, "value": fresh})
            return fresh

        return await self.transaction(run)
