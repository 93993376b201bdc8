"""Workstreams on the spoke: one agent loop per workstream, its box, and an event outbox.

Events are numbered per workstream (``sseq``) and kept until the hub acknowledges them; after
a reconnect everything unacknowledged is sent again, and the hub drops what it already has.
So a hub restart or a cut connection loses no event and duplicates none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import messages
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from spoke.boxes.base import BoxManager, BoxSpec
from spoke.policy import Policy

if TYPE_CHECKING:  # the agent stack (SDKs) loads only when a workstream starts
    from spoke.agent.llm import ModelClient, ModelError, ModelSpec, ToolCall
    from spoke.agent.loop import AgentLoop

log = logging.getLogger("spokehub.spoke.ws")

# How long a turn whose model call lost the hub's relay waits for the hub to be back (a
# restart takes seconds; longer, and the turn fails with the model error as before).
RELAY_RETRY_WAIT_S = 60.0
# In a workstream's inbox instead of a message: continue the interrupted turn the history
# ends in (``ws.start`` with ``continue_turn``, a workstream moved from a lost spoke).
CONTINUE = "\x00continue"
Notify = Callable[[str, Any], Awaitable[None]]


@dataclass
class HubAccess:
    """How this spoke reaches hub-held models: the relay URL, session token and CA file."""

    hub_url: str = ""
    relay_token: str = ""
    ca_file: str | None = None


@dataclass
class _Workstream:
    ws_id: str
    box_id: str
    loop: AgentLoop
    inbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None
    current: asyncio.Task[str] | None = None
    approvals: dict[str, asyncio.Future[tuple[bool, str]]] = field(default_factory=dict)
    sseq: int = 0
    outbox: list[messages.WsEvent] = field(default_factory=list)
    models: list[v.ModelRef] = field(default_factory=list)  # to rebuild the client

    def busy(self) -> bool:
        return self.current is not None or not self.inbox.empty()


class WorkstreamRunner:
    def __init__(self, boxes: BoxManager, policy: Policy, *, default_image: str | None,
                 max_workstreams: int, local_models: dict[str, ModelSpec] | None = None) -> None:
        self.boxes, self.policy = boxes, policy
        self.default_image = default_image or (policy.allowed_images[0] if policy.allowed_images else None)
        self.max_workstreams = max_workstreams
        self.local_models = local_models or {}
        self.hub = HubAccess()
        self._hub_changed = asyncio.Event()  # set, and replaced, on every new hub session
        self._ws: dict[str, _Workstream] = {}
        self._notify: Notify | None = None

    # ------------------------------------------------------------- link state
    async def attach(self, notify: Notify | None, hub: HubAccess | None = None) -> None:
        """Called on every (re)connect with a way to send; resends the unacknowledged."""
        self._notify = notify
        if hub is not None and hub != self.hub:
            self.hub = hub
            for ws in self._ws.values():  # the relay token is per session: rebuild clients
                with contextlib.suppress(RemoteError):
                    ws.loop.client = self._client(ws.models)
            self._hub_changed.set()
            self._hub_changed = asyncio.Event()
        if notify is not None:
            for ws in list(self._ws.values()):
                for event in list(ws.outbox):
                    await notify("ws.event", event)

    def acked(self, ack: messages.WsEventAck) -> None:
        ws = self._ws.get(ack.ws_id)
        if ws is not None:
            ws.outbox = [e for e in ws.outbox if e.sseq > ack.sseq]

    def active(self) -> list[str]:
        """Every workstream this spoke holds, busy or idle."""
        return list(self._ws)

    def busy(self) -> int:
        """Workstreams working now (a message in hand or queued): what capacity counts.
        Idle and errored ones keep their box and transcript but hold no slot."""
        return sum(1 for ws in self._ws.values() if ws.busy())

    def busy_ids(self) -> list[str]:
        """The workstreams in a turn now (or with a message queued): what a stopping spoke
        hands back as interrupted."""
        return [ws.ws_id for ws in self._ws.values() if ws.busy()]

    def _full(self) -> str:
        return f"all {self.max_workstreams} workstream slots of this spoke are busy"

    # ------------------------------------------------------------------ verbs
    async def start(self, p: v.WsStart) -> v.WsStarted:
        """Start (or, with ``p.history``, resume) a workstream in box ``p.box_id``.

        A resumed workstream keeps its box when it still exists, so its files are there; when
        it is gone a new, empty one is made and the transcript says so. Capacity counts only
        busy workstreams (see :meth:`busy`). Pinned by tests/test_ws_capacity.py."""
        existing = self._ws.get(p.ws_id)
        if existing is not None:  # a retried start after a reconnect: same answer, no second box
            return v.WsStarted(box_id=existing.box_id, image=(await self.boxes.get(existing.box_id)).image)
        if self.busy() >= self.max_workstreams:
            raise RemoteError(ErrorCode.BUSY, self._full())
        image = p.image or self.default_image
        if not image:
            raise RemoteError(ErrorCode.INVALID, "no image given and this spoke has no default image")
        from spoke.agent.loop import AgentLoop
        from spoke.agent.tools import BoxSandbox

        boxes = await self.boxes.list()
        reused = any(b.id == p.box_id for b in boxes)
        limits = self.policy.check_create(_CreateView(image),
                                          len([b for b in boxes if b.id != p.box_id]))
        client = self._client(p.models)
        info = await self.boxes.create(p.box_id, BoxSpec(image=image, memory_bytes=limits["memory_bytes"],
                                                         cpus=limits["cpus"], pids=limits["pids"],
                                                         workspace_bytes=limits["workspace_bytes"]))
        ws = _Workstream(p.ws_id, p.box_id, loop=None)  # type: ignore[arg-type]
        ws.sseq = p.seq_base
        ws.models = list(p.models)
        ws.loop = AgentLoop(client=client, sandbox=BoxSandbox(self.boxes, p.box_id),
                            emit=lambda kind, data: self._emit(ws, kind, data),
                            ask=lambda call: self._ask(ws, call), auto_approve=p.auto_approve,
                            history=list(p.history),
                            model_retry=lambda err, failed: self._relay_retry(ws, err, failed))
        self._ws[p.ws_id] = ws
        if p.history and not reused:
            await self._emit(ws, "notice", {"message": "the workstream's previous box was gone: "
                                            "continuing in a new, empty box (files made before are lost)"})
        ws.inbox.put_nowait(CONTINUE if p.continue_turn else p.message)
        ws.worker = asyncio.get_running_loop().create_task(self._work(ws))
        return v.WsStarted(box_id=p.box_id, image=info.image or image, box_reused=reused)

    async def send(self, p: v.WsSend) -> v.WsAck:
        """Queue a message. An idle workstream needs a free slot to take it (busy: the hub keeps
        the message and delivers it when one frees); a busy one just queues it."""
        ws = self._get(p.ws_id)
        if not ws.busy() and self.busy() >= self.max_workstreams:
            raise RemoteError(ErrorCode.BUSY, self._full())
        ws.inbox.put_nowait(p.message)
        return v.WsAck(known=True)

    async def approve(self, p: v.WsApprove) -> v.WsAck:
        future = self._get(p.ws_id).approvals.get(p.call_id)
        if future is None or future.done():
            return v.WsAck(known=False)
        future.set_result((p.approved, p.reason))
        return v.WsAck(known=True)

    async def cancel(self, p: v.WsRef) -> v.WsAck:
        ws = self._get(p.ws_id)
        if ws.current is not None and not ws.current.done():
            ws.current.cancel()
        return v.WsAck(known=True)

    async def close(self, p: v.WsRef) -> v.WsAck:
        ws = self._ws.get(p.ws_id)
        if ws is None:
            return v.WsAck(known=False)
        if ws.worker is not None:
            ws.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ws.worker
        await self.boxes.destroy(ws.box_id)
        await self._emit(ws, "state", {"state": "closed"})
        self._ws.pop(p.ws_id, None)
        return v.WsAck(known=True)

    async def shutdown(self) -> None:
        for ws in list(self._ws.values()):
            if ws.worker is not None:
                ws.worker.cancel()

    # -------------------------------------------------------------- internals
    def _get(self, ws_id: str) -> _Workstream:
        ws = self._ws.get(ws_id)
        if ws is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"workstream {ws_id} is not running on this spoke")
        return ws

    def _client(self, refs: list[v.ModelRef]) -> ModelClient:
        from spoke.agent.llm import FallbackClient, ModelSpec, make_client

        clients: list[ModelClient] = []
        for ref in refs:
            if ref.via == "spoke":
                spec = self.local_models.get(ref.alias)
                if spec is None:
                    continue
            else:
                base = self.hub.hub_url.rstrip("/") + ("/relay/openai/v1" if ref.provider == "openai" else "/relay/anthropic")
                spec = ModelSpec(alias=ref.alias, provider=ref.provider, base_url=base,
                                 api_key=self.hub.relay_token, model=ref.alias,
                                 context_window=ref.context_window, ca_file=self.hub.ca_file)
            clients.append(make_client(spec))
        if not clients:
            raise RemoteError(ErrorCode.INVALID, "none of the requested models is available on this spoke")
        return clients[0] if len(clients) == 1 else FallbackClient(clients)

    async def _relay_retry(self, ws: _Workstream, err: ModelError, failed: ModelClient) -> bool:
        """Whether a failed model call should be asked again: only when it could not reach
        (or lost) the hub's relay — no HTTP status, retryable — and a new hub session comes
        within RELAY_RETRY_WAIT_S (a hub restart or a cut link: the relay token is per session,
        and :meth:`attach` gives the loop a new client for it, so a client other than the
        one that failed means the way is back). A relay that answers with an error, or a model
        the spoke reaches itself, fails the turn as before. Pinned by
        tests/test_kill_and_restart.py::test_a_hub_restart_mid_turn_loses_nothing."""
        if err.status is not None or not err.retryable or all(r.via == "spoke" for r in ws.models):
            return False
        deadline = asyncio.get_running_loop().time() + RELAY_RETRY_WAIT_S
        while ws.loop.client is failed or self._notify is None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hub_changed.wait(), remaining)
        return True

    async def _emit(self, ws: _Workstream, kind: str, data: dict[str, Any]) -> None:
        ws.sseq += 1
        event = messages.WsEvent(ws_id=ws.ws_id, sseq=ws.sseq, kind=kind, data=data)
        ws.outbox.append(event)
        if self._notify is not None:
            with contextlib.suppress(Exception):  # a dead link: the outbox resends on reconnect
                await self._notify("ws.event", event)

    async def _ask(self, ws: _Workstream, call: ToolCall) -> tuple[bool, str]:
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        ws.approvals[call.id] = future
        try:
            return await future  # as long as it takes: approvals never time out by themselves
        finally:
            ws.approvals.pop(call.id, None)

    async def _work(self, ws: _Workstream) -> None:
        while True:
            message = await ws.inbox.get()
            turn = ws.loop.continue_turn() if message is CONTINUE else ws.loop.handle_message(message)
            ws.current = asyncio.get_running_loop().create_task(turn)
            try:
                await ws.current
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the worker itself is being cancelled (close)
                await self._emit(ws, "state", {"state": "idle"})
            except Exception as err:  # the loop already reported it as an error event
                log.info("workstream %s: %s", ws.ws_id, err)
            finally:
                ws.current = None


@dataclass
class _CreateView:
    """The fields of a box create that the policy checks, for a workstream's own box."""

    image: str
    network: bool = False
    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None


def load_local_models(path: Path | None) -> dict[str, ModelSpec]:
    """Spoke-local models (e.g. a GPU endpoint on this machine) from ``path``
    (``spoke join|run --models-file``): the same ``[models.ALIAS]`` tables as the hub's
    ``hub.toml``, parsed and validated by :mod:`protocol.model_config`. A spoke calls these
    endpoints itself, so each needs a ``base_url``; ``api_key`` defaults to "none" (local
    servers take any). :class:`protocol.model_config.ModelConfigError` names what is wrong.

    Pinned by ``tests/test_local_models.py``; end to end by ``tests/test_workstreams_e2e.py``."""
    if path is None:
        return {}
    from protocol.model_config import ModelConfigError, model_entry, parse_models_toml
    from spoke.agent.llm import ModelSpec

    out: dict[str, ModelSpec] = {}
    for alias, raw in parse_models_toml(path.read_text(), str(path)).models.items():
        try:
            entry = model_entry(alias, raw)
        except ModelConfigError as err:
            raise ModelConfigError(f"{path}: {err}") from None
        if entry.base_url is None:
            raise ModelConfigError(f"{path}: model {alias!r}: 'base_url' is required "
                                   "(a spoke calls its own models directly)")
        out[alias] = ModelSpec(alias=alias, provider=entry.provider, base_url=entry.base_url,
                               api_key="none" if entry.api_key is None else entry.api_key,
                               model=entry.model, context_window=entry.context_window)
    return out
