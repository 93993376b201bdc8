"""``GET /api/cluster``: the hubs of the cluster, the leader, which hub holds which spoke.

Pinned by tests/hub/test_cluster_node.py and tests/test_multihub.py.
"""

from __future__ import annotations

from aiohttp import web

from hub.cluster.node import ClusterNode
from hub.openapi import Reply, operation
from hub.openapi.models import fleet as m


class ClusterApi:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/cluster", self.status)]

    @operation("The hubs of the cluster", tag="cluster", description=(
        "Every hub serving this cluster (one database, one public URL; docs/scaling.md), which "
        "one is the leader, and which hub holds each connected spoke's link. A hub alone is a "
        "cluster of one."), replies=(Reply(200, "the cluster", m.ClusterStatus),))
    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.node.status())
