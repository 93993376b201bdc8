"""The network of a spoke's networked boxes: one bridge per spoke, inter-container traffic off.

Why (issue 8 item 12): boxes with network used to share Docker's default ``bridge``, where
containers reach each other freely, so one box could probe or attack every other networked
box on the machine. Now every networked box of a spoke is on ``spokehub-<spoke>-net``, a
bridge network made by the spoke on first use, labelled like its containers
(``spokehub.managed``, ``spokehub.spoke``), with ``com.docker.network.bridge.enable_icc``
off: Docker's iptables rules drop traffic between containers on it, while traffic out of the
bridge (the host's gateway address, and beyond it whatever the host routes) is untouched. The
network is removed when the spoke's last networked box goes, and by the reap.

A lock orders "make sure the network exists, create the container on it" against "no box
uses it any more, remove it", so a create never finds its network removed under it; another
process of the same spoke racing us meets Docker's own answers (a name conflict, or active
endpoints), which are taken as "someone else got there first".

Pinned by tests/boxes/test_docker_isolation.py (two boxes cannot connect, the gateway can be
reached, nothing is left after destroy or reap) and tests/test_box_hardening.py end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from spoke.boxes import docker_util as du
from spoke.boxes.base import BoxError

Run = Callable[..., Awaitable[Any]]  # the manager's _run(what, fn, *args, **kwargs)
ICC_OPTION = "com.docker.network.bridge.enable_icc"


class BoxNetwork:
    """``spokehub-<spoke>-net`` for one spoke: made on first use, removed when unused."""

    def __init__(self, run: Run, api: Callable[[], Awaitable[Any]], spoke_name: str,
                 name: str) -> None:
        self._run, self._api = run, api
        self.spoke_name, self.name = spoke_name, name
        self.lock = asyncio.Lock()  # held across ensure() + the container create

    async def ensure(self) -> str:
        """The network's name, after making it if needed (call with :attr:`lock` held)."""
        api = await self._api()
        for _attempt in range(3):
            existing = await self._inspect(api)
            if existing is not None:
                if not du.is_own(existing.get("Labels"), self.spoke_name):
                    raise BoxError(f"a Docker network named {self.name} exists but is not "
                                   f"managed by spoke {self.spoke_name}", "busy")
                if (existing.get("Options") or {}).get(ICC_OPTION) != "false":
                    raise BoxError(f"network {self.name} lets boxes reach each other "
                                   f"({ICC_OPTION} is not false); remove it", "internal")
                return self.name
            try:
                await self._run(f"creating network {self.name}", api.create_network,
                                self.name, driver="bridge", options={ICC_OPTION: "false"},
                                labels={du.LABEL_MANAGED: "1", du.LABEL_SPOKE: self.spoke_name},
                                check_duplicate=True)
                return self.name
            except BoxError as err:
                if err.code != "busy":  # busy (409): made meanwhile by another process
                    raise
        raise BoxError(f"could not create network {self.name}", "busy")

    async def _inspect(self, api: Any) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._run(f"inspecting network {self.name}",
                                                    api.inspect_network, self.name)
            return found
        except BoxError as err:
            if err.code == "not_found":
                return None
            raise

    async def release_if_unused(self) -> bool:
        """Remove the network if none of this spoke's containers (running or not) is on it;
        True if it was removed. Another process's box on it just keeps it."""
        api = await self._api()
        async with self.lock:
            existing = await self._inspect(api)
            if existing is None or not du.is_own(existing.get("Labels"), self.spoke_name):
                return False
            rows = await self._run("listing boxes", api.containers, all=True,
                                   filters=du.own_filters(self.spoke_name))
            if any((r.get("HostConfig") or {}).get("NetworkMode") == self.name
                   or self.name in ((r.get("NetworkSettings") or {}).get("Networks") or {})
                   for r in rows):
                return False
            try:
                await self._run(f"removing network {self.name}", api.remove_network,
                                existing["Id"])
            except BoxError as err:
                if err.code in ("not_found", "busy", "denied"):  # gone, or still in use
                    return False
                raise
            return True
