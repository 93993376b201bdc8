"""Box operations at the hub: record first, then ask the spoke, then reconcile.

A box row is written (state ``creating``) before the spoke is asked, so a create whose caller
gives up never leaves a container nobody knows about: a failed or abandoned create is marked
``failed`` and removed on the spoke, now or at its next reconnect (reaping keeps only boxes the
hub records as running).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from hub.registry import Registry
from hub.store import LIVE_BOX_STATES, Store
from protocol import verbs
from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.boxes")


def new_box_id() -> str:
    return "bx_" + secrets.token_hex(8)


class BoxService:
    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry

    async def _live_box(self, box_id: str) -> dict[str, Any]:
        if not verbs.BOX_ID_RE.match(box_id):
            raise RemoteError(
                ErrorCode.INVALID, f"{box_id!r} is not a box id (bx_ + 16 hex digits)"
            )
        box = await self.store.get_box(box_id)
        if box is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no box {box_id}")
        if box["state"] not in LIVE_BOX_STATES:
            raise RemoteError(ErrorCode.NOT_FOUND, f"box {box_id} is {box['state']}")
        return box

    async def create(self, spoke: str, params: dict[str, Any]) -> dict[str, Any]:
        box_id = new_box_id()
        model = verbs.parse_params(verbs.VERBS["box.create"], {**params, "box_id": box_id})
        link = self.registry.link(spoke)
        await self.store.add_box(box_id, spoke, model.image, model.model_dump(exclude={"box_id"}))  # type: ignore[attr-defined]
        try:
            info = await link.call("box.create", model)
        except BaseException as err:
            await self.store.set_box_state(box_id, "failed")
            asyncio.get_running_loop().create_task(self._cleanup(spoke, box_id))
            if isinstance(err, RemoteError):
                await self.store.audit("box.create_failed", spoke, f"{box_id}: {err}")
            raise
        await self.store.set_box_state(box_id, "running")
        return {"id": box_id, "spoke": spoke, **info.model_dump(exclude={"box_id"})}

    async def _cleanup(self, spoke: str, box_id: str) -> None:
        try:
            await self.registry.link(spoke).call("box.destroy", {"box_id": box_id})
        except RemoteError as err:
            log.info("cleanup of %s on %s deferred to reconnect: %s", box_id, spoke, err)

    async def list(self, spoke: str | None = None) -> list[dict[str, Any]]:
        rows = await self.store.list_boxes(spoke=spoke)
        return [
            {
                "id": r["id"],
                "spoke": r["spoke"],
                "image": r["image"],
                "state": r["state"],
                "created_at": r["created_at"],
            }
            for r in rows
        ]

    async def destroy(self, box_id: str) -> dict[str, Any]:
        if not verbs.BOX_ID_RE.match(box_id):
            raise RemoteError(
                ErrorCode.INVALID, f"{box_id!r} is not a box id (bx_ + 16 hex digits)"
            )
        box = await self.store.get_box(box_id)
        if box is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no box {box_id}")
        if box["state"] not in LIVE_BOX_STATES:
            return {"id": box_id, "removed": False, "state": box["state"]}
        result = await self.registry.link(box["spoke"]).call("box.destroy", {"box_id": box_id})
        await self.store.set_box_state(box_id, "destroyed")
        return {
            "id": box_id,
            "removed": bool(getattr(result, "existed", False)),
            "state": "destroyed",
        }

    async def logs(self, box_id: str, tail: int) -> bytes:
        import base64

        box = await self._live_box(box_id)
        result = await self.registry.link(box["spoke"]).call(
            "box.logs", {"box_id": box_id, "tail": tail}
        )
        return base64.b64decode(getattr(result, "data", ""))

    async def stats(self, box_id: str) -> dict[str, Any]:
        box = await self._live_box(box_id)
        result = await self.registry.link(box["spoke"]).call("box.stats", {"box_id": box_id})
        return result.model_dump()

    async def exec(
        self, box_id: str, params: dict[str, Any]
    ) -> AsyncGenerator[tuple[str, Any], None]:
        """Yields ("stdout"|"stderr", bytes) as output arrives, then ("exit", ExecDone dict)."""
        box = await self._live_box(box_id)
        model = verbs.parse_params(verbs.VERBS["box.exec"], {**params, "box_id": box_id})
        timeout = getattr(model, "timeout_s", None)
        call = await self.registry.link(box["spoke"]).call_stream(
            "box.exec", model, timeout_s=(timeout + 30.0) if timeout else None
        )
        finished = False
        try:
            async for stream, data in call.chunks():
                yield stream, data
            result = await call.result()
            finished = True
            yield "exit", result.model_dump()
        finally:
            if not finished:
                await call.cancel()

    async def put_file(
        self, box_id: str, path: str, size: int, mode: int, source: AsyncIterator[bytes]
    ) -> dict[str, Any]:
        box = await self._live_box(box_id)
        params = {"box_id": box_id, "path": path, "size": size, "mode": mode}
        result = await self.registry.link(box["spoke"]).call_upload("box.put_file", params, source)
        return result.model_dump()

    async def get_file(self, box_id: str, path: str, max_bytes: int) -> AsyncIterator[bytes]:
        box = await self._live_box(box_id)
        params = {"box_id": box_id, "path": path, "max_bytes": max_bytes}
        call = await self.registry.link(box["spoke"]).call_stream("box.get_file", params)
        finished = False
        try:
            async for _stream, data in call.chunks():
                yield data
            await call.result()
            finished = True
        finally:
            if not finished:
                await call.cancel()
