"""What the REST API, MCP and the fleet views show of spokes: the stored rows joined with the
live links, on this hub or (through the cluster view, hub/cluster/links.py) on another.

A mixin of :class:`hub.registry.Registry`, kept apart so the registry's file holds the
connection handling only. Pinned by tests/test_enrollment.py, tests/test_mcp.py,
tests/hub/test_fleet_memory.py, tests/test_fleet_api.py and tests/test_multihub.py.
"""

from __future__ import annotations

import json
from typing import Any

from hub.cluster.links import RemoteLinks
from hub.spoke_calls import SpokeCalls
from hub.spoke_link import SpokeLink
from hub.store import Store


class SpokeViews:
    """Needs the registry's ``store``, ``links``, ``remote``, ``hub_id`` and ``local``."""

    store: Store
    links: dict[str, SpokeLink]
    remote: RemoteLinks[SpokeCalls]
    hub_id: str

    def local(self, name: str) -> SpokeLink | None:
        raise NotImplementedError

    def local_links(self) -> list[SpokeLink]:
        raise NotImplementedError

    @staticmethod
    def spoke_state(row: dict[str, Any], link: SpokeLink | None) -> str:
        """The state the dashboard shows (docs/operator-guide.md, "Spoke states"):
        ``revoked`` wins; a live link is ``connected``, or ``stale`` once nothing came from it
        for two heartbeat intervals (until the link is closed as ``heartbeats missed``);
        without one, how it went: ``left`` (a clean goodbye) or ``lost`` (anything else, a hub
        restart included), as stored when the link closed. Pinned by
        tests/hub/test_fleet_memory.py::test_spoke_goes_connected_stale_lost and
        ::test_a_clean_stop_is_left_and_states_survive_a_restart."""
        if row.get("revoked_at") is not None:
            return "revoked"
        if link is not None:
            return "stale" if link.is_stale() else "connected"
        return "left" if row.get("state") == "left" else "lost"

    async def spoke_summaries(self) -> list[dict[str, Any]]:
        """Every enrolled spoke as the REST API and MCP ``list_spokes`` show it: the stored row
        joined with its live link: its state (:meth:`spoke_state`), load and capacity, and the
        per-verb latency of its recent calls (hub/latency.py). Pinned by
        tests/test_enrollment.py, tests/test_mcp.py, tests/hub/test_fleet_memory.py and
        tests/test_fleet_api.py."""
        out = []
        for row in await self.store.list_spokes():
            link = self.local(row["name"])
            holder = self.remote.holders.get(row["name"]) if link is None else None
            if holder is not None and row.get("revoked_at") is None:
                out.append(self._remote_summary(row, holder.hub_id, list(holder.models),
                                                holder.max_workstreams))
                continue
            beat = link.last_heartbeat if link else None
            out.append({
                "name": row["name"],
                "state": self.spoke_state(row, link),
                "connected": link is not None,
                "last_seen": (link.last_heartbeat_at or link.connected_at) if link else row["last_seen"],
                "connected_at": link.connected_at if link else None,
                "last_heartbeat_at": link.last_heartbeat_at if link else None,
                "silent_s": round(link.silent_s(), 3) if link else None,
                "boxes": row["boxes"],
                "labels": json.loads(row["labels"]),
                "models": list(link.models) if link else [],
                "version": row["version"],
                "enrolled_at": row["enrolled_at"],
                "revoked": row["revoked_at"] is not None,
                "disconnect_reason": "" if link else row["disconnect_reason"],
                "running_calls": beat.running_calls if beat else 0,
                "workstreams": link.workstreams if link else 0,
                "max_workstreams": link.max_workstreams if link else 0,
                "latency": link.latency.summary() if link else {},
                "hub": self.hub_id if link else None,
            })
        return out

    @staticmethod
    def _remote_summary(row: dict[str, Any], hub_id: str, models: list[str],
                        max_workstreams: int) -> dict[str, Any]:
        """A spoke another hub of the cluster holds: what the store knows of it (its live
        load and latencies are that hub's to show)."""
        return {
            "name": row["name"], "state": "connected", "connected": True,
            "last_seen": row["last_seen"], "connected_at": None, "last_heartbeat_at": None,
            "silent_s": None, "boxes": row["boxes"], "labels": json.loads(row["labels"]),
            "models": models, "version": row["version"], "enrolled_at": row["enrolled_at"],
            "revoked": False, "disconnect_reason": "", "running_calls": 0, "workstreams": 0,
            "max_workstreams": max_workstreams, "latency": {}, "hub": hub_id,
        }

    def latency_since(self, start: float) -> dict[str, list[float]]:
        """Durations of the calls every live link finished after ``start`` (the registry's
        clock), by verb: what the history sampler turns into p50/p95/p99 series. Pinned by
        tests/hub/test_fleet_memory.py::test_the_sampler_writes_and_prunes."""
        merged: dict[str, list[float]] = {}
        for link in self.local_links():
            for verb, values in link.latency.since(start).items():
                merged.setdefault(verb, []).extend(values)
        return merged
