"""Executes allowlisted verbs against the box manager, under the spoke's own policy.

The protocol layer has already refused unknown verbs and malformed parameters; this layer adds
what only the spoke can judge (images, counts, ceilings) and maps box errors to typed codes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from protocol import verbs
from protocol.errors import ErrorCode, RemoteError
from spoke.boxes.base import BoxError, BoxManager, BoxSpec
from spoke.policy import Policy

if TYPE_CHECKING:
    from spoke.workstreams import WorkstreamRunner

log = logging.getLogger("spokehub.spoke.dispatch")


class CallIO(Protocol):
    """The streaming side of one call, provided by the connector."""

    async def send(self, stream: str, data: bytes, eof: bool = False) -> None: ...

    def upload(self) -> AsyncIterator[bytes]: ...


Handler = Callable[[BaseModel, CallIO], Awaitable[BaseModel | dict[str, Any]]]


class Dispatcher:
    def __init__(
        self,
        name: str,
        version: str,
        boxes: BoxManager,
        policy: Policy,
        chunk_bytes: int,
        workstreams: WorkstreamRunner | None = None,
    ) -> None:
        self.name, self.version = name, version
        self.workstreams = workstreams
        self.boxes, self.policy = boxes, policy
        self.chunk_bytes = chunk_bytes
        self._create_lock = asyncio.Lock()
        self.handlers: dict[str, Handler] = {
            "box.create": self.box_create,
            "box.list": self.box_list,
            "box.exec": self.box_exec,
            "box.logs": self.box_logs,
            "box.destroy": self.box_destroy,
            "box.put_file": self.box_put_file,
            "box.get_file": self.box_get_file,
            "box.stats": self.box_stats,
            "box.reap": self.box_reap,
            "spoke.info": self.spoke_info,
            "spoke.ping": self.spoke_ping,
            "ws.start": self._ws("start"),
            "ws.send": self._ws("send"),
            "ws.approve": self._ws("approve"),
            "ws.cancel": self._ws("cancel"),
            "ws.close": self._ws("close"),
        }
        missing = set(verbs.VERBS) - set(self.handlers)
        assert not missing, f"verbs without a handler: {missing}"

    async def dispatch(
        self, verb: str, params: BaseModel, io: CallIO
    ) -> BaseModel | dict[str, Any]:
        handler = self.handlers.get(verb)
        if handler is None:  # unreachable while the table and handlers agree
            raise RemoteError(ErrorCode.DENIED, f"verb {verb!r} is not on the allowlist")
        try:
            return await handler(params, io)
        except BoxError as err:
            raise RemoteError(err.code, str(err)) from None

    async def box_create(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        async with self._create_lock:  # the count check and the create must not interleave
            live = [b for b in await self.boxes.list() if b.id != p.box_id]
            limits = self.policy.check_create(p, len(live))
            spec = BoxSpec(
                image=p.image,
                network=p.network,
                memory_bytes=limits["memory_bytes"],
                cpus=limits["cpus"],
                pids=limits["pids"],
                env=dict(p.env),
            )
            info = await self.boxes.create(p.box_id, spec)
        return _box_model(info)

    async def box_list(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        return {"boxes": [_box_model(b).model_dump() for b in await self.boxes.list()]}

    async def box_exec(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        handle = await self.boxes.exec(
            p.box_id, list(p.cmd), env=dict(p.env) or None, workdir=p.workdir, timeout=p.timeout_s
        )
        try:
            async for stream, data in handle.chunks():
                for start in range(0, len(data), self.chunk_bytes):
                    await io.send(stream, data[start : start + self.chunk_bytes])
            result = await handle.wait()
        except BaseException:
            await handle.kill()  # deadline, cancel or lost hub: the process must not linger
            raise
        return {
            "exit_code": result.exit_code,
            "timed_out": result.timed_out,
            "cancelled": result.cancelled,
        }

    async def box_logs(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        data = await self.boxes.logs(p.box_id, p.tail)
        return {"data": base64.b64encode(data[-512 * 1024 :]).decode()}

    async def box_destroy(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        return {"existed": await self.boxes.destroy(p.box_id)}

    async def box_put_file(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        if p.size > self.policy.max_file_bytes:
            raise RemoteError(
                ErrorCode.DENIED, f"file of {p.size} bytes exceeds this spoke's limit"
            )
        parts: list[bytes] = []
        received = 0
        async for piece in io.upload():
            received += len(piece)
            if received > p.size:
                raise RemoteError(
                    ErrorCode.INVALID, f"upload is longer than the declared {p.size} bytes"
                )
            parts.append(piece)
        if received != p.size:
            raise RemoteError(ErrorCode.INVALID, f"upload ended after {received} of {p.size} bytes")
        written = await self.boxes.put_file(
            p.box_id, p.path, b"".join(parts), p.mode,
            parents=p.parents, into_dir_name=p.into_dir_name,
        )
        return {"size": received, "path": written}

    async def box_get_file(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        # Resolved here (relative paths mean the box's working directory, which only this
        # side knows) so the result can say which file was read.
        path = await self.boxes.resolve_path(p.box_id, p.path)
        data = await self.boxes.get_file(
            p.box_id, path, min(p.max_bytes, self.policy.max_file_bytes)
        )
        for start in range(0, len(data), self.chunk_bytes):
            await io.send("file", data[start : start + self.chunk_bytes])
        await io.send("file", b"", eof=True)
        return {"size": len(data), "path": path}

    async def box_stats(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        stats = await self.boxes.stats(p.box_id)
        return {
            "memory_bytes": int(stats.get("memory_bytes", 0)),
            "cpu_percent": float(stats.get("cpu_percent", 0.0)),
            "pids": int(stats.get("pids", 0)),
        }

    async def box_reap(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        removed = await self.boxes.reap(set(p.keep))
        if removed:
            log.info("reaped %d orphan box(es): %s", len(removed), ", ".join(removed))
        return {"removed": removed}

    def _ws(self, action: str) -> Handler:
        async def handle(p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
            if self.workstreams is None:
                raise RemoteError(ErrorCode.UNAVAILABLE, "this spoke runs no workstreams")
            result: dict[str, Any] = await getattr(self.workstreams, action)(p)
            return result

        return handle

    async def spoke_info(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        boxes = [_box_model(b).model_dump() for b in await self.boxes.list()]
        return {
            "name": self.name,
            "version": self.version,
            "boxes": boxes,
            "labels": list(self.policy.labels),
            "policy": self.policy.describe(),
            "capacity": {
                "max_boxes": self.policy.max_boxes,
                "free_boxes": self.policy.max_boxes - len(boxes),
            },
            "workstreams": self.workstreams.active() if self.workstreams else [],
        }

    async def spoke_ping(self, p: Any, io: CallIO) -> BaseModel | dict[str, Any]:
        return {}


def _box_model(info: Any) -> verbs.BoxInfoModel:
    return verbs.BoxInfoModel(
        box_id=info.id,
        image=info.image,
        state=info.state,
        created_at=info.created_at,
        network=info.network,
    )
