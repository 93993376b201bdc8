"""Executes allowlisted verbs against the box manager, under the spoke's own policy.

The protocol layer has already refused unknown verbs and malformed parameters; this layer adds
what only the spoke can judge (images, counts, ceilings) and maps box errors to typed codes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from pydantic import BaseModel

from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tracecontext import in_trace
from protocol.verbs import P, R
from spoke.boxes.base import BoxError, BoxInfo, BoxManager, BoxSpec
from spoke.channels import Channels
from spoke.exec_sessions import ExecSession, ExecSessions
from spoke.policy import Policy

if TYPE_CHECKING:
    from spoke.workstreams import WorkstreamRunner

log = logging.getLogger("spokehub.spoke.dispatch")
_TRACER = trace.get_tracer("spokehub.spoke")


class CallIO(Protocol):
    """The streaming side of one call (protocol/link.py's ``CallIO`` is the real one)."""

    async def send(self, stream: str, data: bytes, eof: bool = False) -> None: ...

    def upload(self) -> AsyncIterator[bytes]: ...

    @property
    def link_lost(self) -> bool:
        """The call ended with its connection (a resumable exec keeps running)."""
        ...


Handler = Callable[[Any, CallIO], Awaitable[BaseModel]]


def _on(verb: v.Verb[P, R], handler: Callable[[P, CallIO], Awaitable[R]]) -> tuple[str, Handler]:
    """One row of the handler table; mypy checks the handler against the verb's types."""
    return verb.name, handler


# What a stopping spoke refuses (Session._leave): what would start something new. Cleanup
# (destroy, ws.close), reads and the calls already running go on.
NEW_WORK = frozenset({v.BOX_CREATE.name, v.BOX_EXEC.name, v.BOX_PUT_FILE.name, v.WS_START.name,
                      v.WS_SEND.name, v.BOX_OPEN.name})


class Dispatcher:
    """Serves every verb of the allowlist (a verb without a handler fails at start-up).
    Pinned by tests/boxes/ (the box manager below it), tests/hub/ and the e2e tests."""

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
        self._transfers = 0  # file transfers in progress (policy.max_transfers at most)
        self.leaving = False  # stopping cleanly: running calls finish, new work is refused
        self.execs = ExecSessions()  # resumable execs, across reconnects (spoke/exec_sessions.py)
        self.channels = Channels(boxes, name, chunk_bytes)  # PTYs and ports (spoke/channels.py)
        self.handlers: dict[str, Handler] = dict([
            _on(v.BOX_CREATE, self.box_create),
            _on(v.BOX_LIST, self.box_list),
            _on(v.BOX_EXEC, self.box_exec),
            _on(v.BOX_ATTACH, self.box_attach),
            _on(v.BOX_LOGS, self.box_logs),
            _on(v.BOX_DESTROY, self.box_destroy),
            _on(v.BOX_PUT_FILE, self.box_put_file),
            _on(v.BOX_GET_FILE, self.box_get_file),
            _on(v.BOX_STATS, self.box_stats),
            _on(v.BOX_REAP, self.box_reap),
            _on(v.BOX_PAUSE, self.box_pause),
            _on(v.BOX_RESUME, self.box_resume),
            _on(v.BOX_OPEN, self.box_open),
            _on(v.BOX_INPUT, self.box_input),
            _on(v.SPOKE_INFO, self.spoke_info),
            _on(v.SPOKE_PING, self.spoke_ping),
            _on(v.WS_START, self.ws_start),
            _on(v.WS_SEND, self.ws_send),
            _on(v.WS_APPROVE, self.ws_approve),
            _on(v.WS_CANCEL, self.ws_cancel),
            _on(v.WS_CLOSE, self.ws_close),
        ])
        missing = set(v.VERBS) - set(self.handlers)
        if missing:
            raise RuntimeError(f"verbs without a handler: {sorted(missing)}")

    async def dispatch(self, verb: str, params: BaseModel, io: CallIO) -> BaseModel:
        """Run ``verb``'s handler; a box error becomes its typed code. A call the hub traced
        (protocol/link.py made its ``tp`` current) gets a handler span, parent of the Docker
        calls' spans (spoke/boxes/docker_boxes.py)."""
        handler = self.handlers.get(verb)
        if handler is None:  # unreachable while the table and handlers agree
            raise RemoteError(ErrorCode.DENIED, f"verb {verb!r} is not on the allowlist")
        if self.leaving and verb in NEW_WORK:
            raise RemoteError(ErrorCode.BUSY, f"spoke {self.name} is stopping: it takes no new work")
        try:
            if in_trace():  # the hub traced this call (the frame's tp): the handler's span
                with _TRACER.start_as_current_span(verb, kind=trace.SpanKind.SERVER,
                                                   attributes=self._span_attributes(verb, params)):
                    return await handler(params, io)
            return await handler(params, io)
        except BoxError as err:
            raise RemoteError(err.code, str(err)) from None

    def _span_attributes(self, verb: str, params: BaseModel) -> dict[str, str]:
        """What a handler span says: the verb, this spoke, the box (never a command line:
        it may hold secrets). Pinned by tests/test_tracing.py."""
        attributes = {"rpc.system": "spokehub", "rpc.method": verb, "spokehub.spoke": self.name}
        box_id = getattr(params, "box_id", None)
        if isinstance(box_id, str):
            attributes["spokehub.box_id"] = box_id
        return attributes

    async def box_create(self, p: v.BoxCreate, io: CallIO) -> v.BoxInfoModel:
        """The policy's checks and defaults (user, workspace size, limits), then the box.
        Pinned by tests/test_box_hardening.py and tests/boxes/."""
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
                user=p.user,
                workspace_bytes=limits["workspace_bytes"],
                require_workspace_limit=p.workspace_bytes is not None,
                allow_root=self.policy.allow_root,
            )
            info = await self.boxes.create(p.box_id, spec)
        return _box_model(info)

    async def box_list(self, p: v.Empty, io: CallIO) -> v.BoxList:
        return v.BoxList(boxes=[_box_model(b) for b in await self.boxes.list()])

    async def box_exec(self, p: v.BoxExec, io: CallIO) -> v.ExecDone:
        await self.execs.sweep()
        handle = await self.boxes.exec(
            p.box_id, list(p.cmd), env=dict(p.env) or None, workdir=p.workdir, timeout=p.timeout_s
        )
        if p.exec_id is not None:
            try:
                session = self.execs.start(p.exec_id, handle)
            except BaseException:
                await handle.kill()
                raise
            return await self._pump(session, 0, io)
        try:
            async for stream, data in handle.chunks():
                await io.send(stream, data)  # in pieces of the link's chunk size
            result = await handle.wait()
        except BaseException:
            await handle.kill()  # deadline, cancel or lost hub: the process must not linger
            raise
        return v.ExecDone(exit_code=result.exit_code, timed_out=result.timed_out,
                          cancelled=result.cancelled)

    async def box_attach(self, p: v.ExecAttach, io: CallIO) -> v.ExecDone:
        """The rest of a resumable exec's output, from the hub's ``offset``, then its result.
        Pinned by tests/test_work_survives.py::test_an_exec_survives_a_cut_connection."""
        await self.execs.sweep()
        session = self.execs.get(p.exec_id)
        return await self._pump(session, p.offset, io)

    async def _pump(self, session: ExecSession, offset: int, io: CallIO) -> v.ExecDone:
        """Send the session's output from ``offset``; a lost connection leaves the command
        running for a re-attach, anything else (cancel, deadline, the end) ends it."""
        try:
            async for stream, data in session.pump(offset):
                await io.send(stream, data)  # in pieces of the link's chunk size
        except asyncio.CancelledError:
            if io.link_lost:
                self.execs.detached(session)
            else:
                await self.execs.end(session)
            raise
        except BaseException:
            await self.execs.end(session)
            raise
        result = session.result
        await self.execs.end(session)
        assert result is not None  # set before the pump ends without an error
        return v.ExecDone(exit_code=result.exit_code, timed_out=result.timed_out,
                          cancelled=result.cancelled)

    async def box_logs(self, p: v.BoxLogs, io: CallIO) -> v.LogsResult:
        data = await self.boxes.logs(p.box_id, p.tail)
        return v.LogsResult(data=base64.b64encode(data[-512 * 1024 :]).decode())

    async def box_pause(self, p: v.BoxRef, io: CallIO) -> v.BoxInfoModel:
        return _box_model(await self.boxes.pause(p.box_id))

    async def box_resume(self, p: v.BoxRef, io: CallIO) -> v.BoxInfoModel:
        return _box_model(await self.boxes.resume(p.box_id))

    async def box_open(self, p: v.BoxOpen, io: CallIO) -> v.ExecDone:
        """A PTY session or a port connection, for as long as this call lasts (a cancel or a
        lost link closes it). Pinned by tests/test_pty.py and tests/test_port_preview.py."""
        return await self.channels.serve(p, io)

    async def box_input(self, p: v.ChannelInput, io: CallIO) -> v.Empty:
        return await self.channels.input(p)

    async def box_destroy(self, p: v.BoxRef, io: CallIO) -> v.Destroyed:
        await self.channels.close_box(p.box_id)  # its terminals and previews end first
        return v.Destroyed(existed=await self.boxes.destroy(p.box_id))

    @contextlib.contextmanager
    def _transfer_slot(self) -> Iterator[None]:
        """One of the spoke's ``policy.max_transfers`` file transfers, or ``busy``: each
        holds a worker thread and a Docker stream for as long as it lasts."""
        if self._transfers >= self.policy.max_transfers:
            raise RemoteError(ErrorCode.BUSY, f"too many file transfers in progress on spoke "
                              f"{self.name} (limit {self.policy.max_transfers}); retry shortly")
        self._transfers += 1
        try:
            yield
        finally:
            self._transfers -= 1

    async def box_put_file(self, p: v.PutFile, io: CallIO) -> v.FileDone:
        """Streamed into the box as the chunks arrive (never held whole: issue 8 item 6);
        the manager checks the upload is exactly ``size`` bytes. Pinned by
        tests/test_box_hardening.py (spoke RSS) and tests/test_box_cp.py."""
        if p.size > self.policy.max_file_bytes:
            raise RemoteError(
                ErrorCode.DENIED, f"file of {p.size} bytes exceeds this spoke's limit"
            )
        with self._transfer_slot():
            written = await self.boxes.put_file(
                p.box_id, p.path, io.upload(), p.size, p.mode,
                parents=p.parents, into_dir_name=p.into_dir_name,
            )
        return v.FileDone(size=p.size, path=written)

    async def box_get_file(self, p: v.GetFile, io: CallIO) -> v.FileDone:
        """Streamed out of the box chunk by chunk, each sent under the call's flow control."""
        # Resolved here (relative paths mean the box's working directory, which only this
        # side knows) so the result can say which file was read.
        path = await self.boxes.resolve_path(p.box_id, p.path)
        sent = 0
        with self._transfer_slot():
            stream = self.boxes.get_file(p.box_id, path,
                                         min(p.max_bytes, self.policy.max_file_bytes))
            try:
                async for data in stream:
                    await io.send("file", data)  # in pieces of the link's chunk size
                    sent += len(data)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
        await io.send("file", b"", eof=True)
        return v.FileDone(size=sent, path=path)

    async def box_stats(self, p: v.BoxRef, io: CallIO) -> v.StatsResult:
        stats = await self.boxes.stats(p.box_id)
        return v.StatsResult(memory_bytes=int(stats.get("memory_bytes", 0)),
                             cpu_percent=float(stats.get("cpu_percent", 0.0)),
                             pids=int(stats.get("pids", 0)))

    async def box_reap(self, p: v.Reap, io: CallIO) -> v.Reaped:
        removed = await self.boxes.reap(set(p.keep))
        if removed:
            log.info("reaped %d orphan box(es): %s", len(removed), ", ".join(removed))
        return v.Reaped(removed=removed)

    def _runner(self) -> WorkstreamRunner:
        if self.workstreams is None:
            raise RemoteError(ErrorCode.UNAVAILABLE, "this spoke runs no workstreams")
        return self.workstreams

    async def ws_start(self, p: v.WsStart, io: CallIO) -> v.WsStarted:
        return await self._runner().start(p)

    async def ws_send(self, p: v.WsSend, io: CallIO) -> v.WsAck:
        return await self._runner().send(p)

    async def ws_approve(self, p: v.WsApprove, io: CallIO) -> v.WsAck:
        return await self._runner().approve(p)

    async def ws_cancel(self, p: v.WsRef, io: CallIO) -> v.WsAck:
        return await self._runner().cancel(p)

    async def ws_close(self, p: v.WsRef, io: CallIO) -> v.WsAck:
        return await self._runner().close(p)

    async def spoke_info(self, p: v.Empty, io: CallIO) -> v.SpokeInfo:
        boxes = [_box_model(b) for b in await self.boxes.list()]
        warm = getattr(self.boxes, "warm", None)
        return v.SpokeInfo(
            name=self.name,
            version=self.version,
            boxes=boxes,
            labels=list(self.policy.labels),
            policy=self.policy.describe(),
            capacity={"max_boxes": self.policy.max_boxes,
                      "free_boxes": self.policy.max_boxes - len(boxes),
                      # spoke join --warm: {image: "ready/target"} (spoke/boxes/warm_pool.py)
                      **({"warm": warm.status()} if warm is not None else {})},
            workstreams=self.workstreams.active() if self.workstreams else [],
        )

    async def spoke_ping(self, p: v.Empty, io: CallIO) -> v.Empty:
        return v.Empty()


def _box_model(info: BoxInfo) -> v.BoxInfoModel:
    return v.BoxInfoModel(
        box_id=info.id,
        image=info.image,
        state=info.state,
        created_at=info.created_at,
        network=info.network,
    )
