"""The spokes other hubs hold, as links this hub can call through them.

The registry (hub/registry.py) answers "is spoke X connected, and how do I call it" from its
own links first and from this view second, so the box service, routing, the janitor, alerts
and the fleet views work the same whether a spoke's link is here or on another hub of the
cluster. The view is refreshed on every cluster beat (hub/cluster/node.py) and, for one spoke,
as soon as a ``spoke:NAME`` wake-up says its holder changed: a spoke that connects to another
hub is callable from here within a round trip, not a beat.

A view entry is a hint: a call through a hub that no longer holds the spoke comes back
``unavailable`` (hub/cluster/peer_api.py), as a call over a link that just broke does.
Pinned by tests/hub/test_cluster_node.py::test_remote_links_follow_the_holders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from hub.store import Holder

L = TypeVar("L")


class RemoteLinks(Generic[L]):
    """``holder -> link`` made by ``make_link`` (a PeerLink through the holder's hub), one per
    spoke, made again when the spoke moves to another hub. Without ``make_link`` (no peer
    client: a hub alone), the view stays empty."""

    def __init__(self, make_link: Callable[[Holder], L] | None = None) -> None:
        self.make_link = make_link
        self.holders: dict[str, Holder] = {}
        self._links: dict[str, L] = {}

    def replace(self, holders: Iterable[Holder]) -> None:
        """The whole view, from a beat's read of the live holders of other hubs."""
        fresh = {h.spoke: h for h in holders}
        for name in set(self.holders) - set(fresh):
            self.put(name, None)
        for name, holder in fresh.items():
            self.put(name, holder)

    def put(self, name: str, holder: Holder | None) -> None:
        """One spoke's entry: ``None`` when no other live hub holds it."""
        if holder is None:
            self.holders.pop(name, None)
            self._links.pop(name, None)
            return
        old = self.holders.get(name)
        self.holders[name] = holder
        if old is None or old.hub_id != holder.hub_id or old != holder or name not in self._links:
            if self.make_link is not None:
                self._links[name] = self.make_link(holder)

    def get(self, name: str) -> L | None:
        return self._links.get(name)

    def links(self) -> list[L]:
        return [self._links[name] for name in sorted(self._links)]
