"""Who a box runs as: never root unless asked for and allowed.

Why (issue 8 item 2): an image without a ``USER`` ran its box as root. Root in a box has no
capabilities (``cap_drop=ALL``) but still owns everything root owns in the image and is one
kernel bug closer to the host, so the default is now an unprivileged user:

- a requested user (``hub box create --user``) is used as given; if it is root (uid 0, also
  through a name in the image's ``/etc/passwd``) the spoke's policy must allow root
  (``spoke join --allow-root``), else the create is ``denied``;
- otherwise the image's own ``USER`` when that is not root;
- otherwise :data:`~spoke.boxes.base.DEFAULT_BOX_USER` (1000:1000).

The uid/gid are resolved before the box exists (its workspace is formatted owned by them), so
a name is looked up in the image's ``/etc/passwd`` and ``/etc/group``, read from a probe
container that is created (never started) and removed at once; the tables are cached per
image id. Pinned by tests/boxes/test_docker_isolation.py and tests/test_box_hardening.py.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from spoke.boxes import docker_files
from spoke.boxes import docker_util as du
from spoke.boxes.base import DEFAULT_BOX_USER, BoxError, BoxInvalid, BoxSpec, is_root_user

Run = Callable[..., Awaitable[Any]]  # the manager's _run(what, fn, *args, **kwargs)
Call = Callable[..., Awaitable[Any]]  # the manager's _call(fn, *args, **kwargs)
LABEL_PROBE = "spokehub.probe"


class ImageUsers:
    """Chooses and resolves box users for one manager (see the module docstring)."""

    def __init__(self, run: Run, call: Call, pool: Executor, spoke_name: str,
                 prefix: str) -> None:
        self._run, self._call, self._pool = run, call, pool
        self.spoke_name, self._prefix = spoke_name, prefix
        self._tables: dict[str, tuple[str, str]] = {}

    async def choose(self, api: Any, spec: BoxSpec, image: dict[str, Any]
                     ) -> tuple[str | None, int, int]:
        """``(user for the container or None for the image's own, uid, gid)``."""
        image_user = str((image.get("Config") or {}).get("User") or "")
        if spec.user is not None:
            ids = await self.resolve(api, spec.user, image)
            if ids is None:
                raise BoxInvalid(f"user {spec.user} does not exist in image {spec.image}")
            if ids[0] == 0 and not spec.allow_root:
                raise BoxError(f"box user {spec.user} is root (uid 0), which this spoke does "
                               "not allow (its operator can: spoke join --allow-root)", "denied")
            return spec.user, ids[0], ids[1]
        if not is_root_user(image_user):
            ids = await self.resolve(api, image_user, image)
            if ids is None:
                raise BoxInvalid(f"image {spec.image} names user {image_user}, which its "
                                 "/etc/passwd does not have")
            if ids[0] != 0:
                return None, ids[0], ids[1]
        uid, _, gid = DEFAULT_BOX_USER.partition(":")
        return DEFAULT_BOX_USER, int(uid), int(gid)

    async def resolve(self, api: Any, user: str, image: dict[str, Any]) -> tuple[int, int] | None:
        name, group = du.parse_user(user)
        if name.isdigit() and group.isdigit():
            return int(name), int(group)
        passwd, groups = await self._image_tables(api, str(image.get("Id", "")))
        return du.resolve_ids(user, passwd, groups)

    async def _image_tables(self, api: Any, image_id: str) -> tuple[str, str]:
        """``/etc/passwd`` and ``/etc/group`` of an image (cached), from a probe container."""
        if image_id in self._tables:
            return self._tables[image_id]
        name = f"{self._prefix}probe-{secrets.token_hex(6)}"
        labels = {du.LABEL_MANAGED: "1", du.LABEL_SPOKE: self.spoke_name, LABEL_PROBE: "1"}
        created = await self._run(
            "reading the users of the image", api.create_container, image_id,
            command=["/bin/true"], name=name, labels=labels, network_disabled=True,
            host_config=api.create_host_config(network_mode="none"))
        try:
            texts = []
            for path in ("/etc/passwd", "/etc/group"):
                parts: list[bytes] = []
                with contextlib.suppress(BoxError):
                    async for chunk in docker_files.read_stream(
                            self._call, self._pool, api, created["Id"], "image", path, 1 << 20):
                        parts.append(chunk)
                texts.append(b"".join(parts).decode(errors="replace"))
        finally:
            with contextlib.suppress(Exception):
                await self._call(api.remove_container, created["Id"], force=True)
        self._tables[image_id] = (texts[0], texts[1])
        return self._tables[image_id]

    async def reap_probes(self, api: Any) -> None:
        """Remove probe containers a crash left behind."""
        rows = await self._run("listing probe containers", api.containers, all=True,
                               filters={"label": [*du.own_filters(self.spoke_name)["label"],
                                                  f"{LABEL_PROBE}=1"]})
        for row in rows or []:
            if du.is_own(row.get("Labels"), self.spoke_name):
                with contextlib.suppress(Exception):
                    await self._call(api.remove_container, row["Id"], force=True)
