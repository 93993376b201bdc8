"""The hub's PTY and preview routes served on a real local port over the memory cluster.

The real aiohttp routes (hub/pty_api.py, hub/preview.py) with the real auth and error
middlewares, over the hub services and a real spoke session of tests/hub/memory_cluster.py
(the fake manager: a PTY is a local process, a port is 127.0.0.1 on this machine). The real
CLI talks to it through an ``admin.json`` like the one ``hub serve`` writes, so the tmux test
and the preview tests run before (and besides) the Docker manager's in-box agent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from hub.channels import ChannelService
from hub.http_util import auth_middleware, errors_middleware
from hub.preview import Previews
from hub.pty_api import PtyApi
from protocol.tokens import hash_secret, new_id, new_secret
from tests.cluster import free_port
from tests.hub.memory_cluster import IMAGE, MemoryCluster


class ChannelHub:
    """``async with ChannelHub(tmp) as hub``: ``hub.url``, ``hub.key`` (operator), ``hub.box``,
    ``hub.dir`` (for ``SPOKEHUB_HUB_DIR``), ``hub.previews``, ``hub.cluster``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = MemoryCluster(root / "cluster")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = root / "hubdir"
        self.key = "shk_" + new_secret()
        self.box = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ChannelHub:
        (self.root / "cluster").mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        await self.cluster.__aenter__()
        await self.cluster.join("alpha")
        self.box = str((await self.cluster.boxes.create("alpha", {"image": IMAGE}))["id"])
        store = self.cluster.store
        await store.add_api_key(new_id("key"), "pty-test", hash_secret(self.key), "operator")
        channels = ChannelService(self.cluster.boxes)
        self.previews = Previews(channels, store, self.url)
        app = web.Application(middlewares=[errors_middleware, auth_middleware(store, self.url)])
        app.router.add_routes(PtyApi(channels).routes())
        app.router.add_routes(self.previews.routes())
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        (self.dir / "admin.json").write_text(json.dumps({"url": self.url, "api_key": self.key}))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.cluster.__aexit__(*exc)
