"""The registry's side of the cluster: a spoke whose holder changed (it connected to another
hub, newer) or that was revoked through another hub has its link here closed, and a relay
request that reached this hub for a spoke another hub holds is answered.

A mixin of :class:`hub.registry.Registry`; the wake-ups come from hub/cluster/node.py.
Pinned by tests/hub/test_cluster_node.py and tests/test_multihub.py.
"""

from __future__ import annotations

import asyncio
import logging

from hub.cluster.links import RemoteLinks
from hub.spoke_calls import SpokeCalls
from hub.spoke_link import SpokeLink
from hub.store import Store
from protocol import messages
from protocol.errors import RemoteError
from protocol.tokens import hash_secret

log = logging.getLogger("spokehub.hub.registry")


class ClusterHolding:
    """Needs the registry's ``store``, ``links``, ``remote``, ``hub_id``, ``holder_ttl_s``,
    ``_checks``, ``local`` and ``spoke_for_relay_token``."""

    store: Store
    links: dict[str, SpokeLink]
    remote: RemoteLinks[SpokeCalls]
    hub_id: str
    holder_ttl_s: float
    _checks: set[asyncio.Task[None]]

    def local(self, name: str) -> SpokeLink | None:
        raise NotImplementedError

    def spoke_for_relay_token(self, token: str) -> str | None:
        raise NotImplementedError

    def spoke_changed(self, name: str) -> None:
        """The ``spoke:NAME`` wake-up (hub/cluster/node.py): its holder changed, or it was
        revoked, maybe through another hub; :meth:`check_holder` in a task of its own."""
        task = asyncio.get_running_loop().create_task(self.check_holder(name))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def check_holder(self, name: str) -> None:
        """Bring this hub in line with the store about spoke ``name``: close a link here that
        another hub has taken over (the spoke connected there, newer) or that was revoked,
        and refresh the view of where it can be called. Pinned by
        tests/hub/test_cluster_node.py::test_a_spoke_that_moves_is_closed_on_its_old_hub and
        tests/test_multihub.py."""
        try:
            holder = await self.store.holder_of(name, self.holder_ttl_s)
            link = self.local(name)
            if link is not None and holder is not None and holder.hub_id != self.hub_id:
                await link.close(messages.CLOSE_REPLACED, "replaced by a newer connection "
                                 f"(to hub {holder.hub_id})")
            elif link is not None:
                row = await self.store.get_spoke(name)
                if row is None or row["revoked_at"] is not None:
                    if self.links.get(name) is link:
                        del self.links[name]
                    await link.close(messages.CLOSE_REVOKED, "spoke revoked")
        except RemoteError as err:  # the store is closing: the hub is stopping
            log.debug("holder check of %s skipped: %s", name, err)
            return
        self.remote.put(name, holder if holder is not None and holder.hub_id != self.hub_id
                        else None)

    async def relay_spoke(self, token: str) -> str | None:
        """:meth:`spoke_for_relay_token`, or, for a spoke whose link another hub of the
        cluster holds (its relay request came here through the load balancer), the spoke
        that hub issued the token to. Pinned by tests/test_multihub.py."""
        name = self.spoke_for_relay_token(token)
        if name is not None:
            return name
        holder = await self.store.holder_by_relay_token(hash_secret(token), self.holder_ttl_s)
        return None if holder is None or holder.hub_id == self.hub_id else holder.spoke
