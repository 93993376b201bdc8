"""A hub and spokes in one process, joined by the in-memory pipe (no sockets, no Docker).

The hub's real registry, box service and workstream service over a real SQLite store; each
spoke is the real :class:`spoke.session.Session` with the real dispatcher, policy and
workstream runner over the fake box manager (the one the conformance suite holds to Docker's
behaviour). Clocks are injected. Agent turns go to the scripted LLM, the one stand-in the
project allows, as the spoke's own model (so no relay is needed).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from hub.boxes import BoxService
from hub.model_config import ModelsConfig
from hub.registry import Registry
from hub.store import Store
from hub.workstreams.service import WorkstreamService
from protocol.connection import Limits
from protocol.tokens import JoinToken, hash_secret, new_id, new_secret
from protocol.transport import memory_pipe
from spoke.agent.llm import ModelSpec
from spoke.boxes.fake_boxes import FakeBoxManager
from spoke.dispatcher import Dispatcher
from spoke.identity import Identity, SpokeState
from spoke.policy import Policy
from spoke.session import Fatal, Session, SpokeRuntime
from spoke.workstreams import WorkstreamRunner
from tests.protocol.helpers import FakeClock

PIN = "sha256:" + "ab" * 32
IMAGE = "sandbox:test"


@dataclass
class MemorySpoke:
    name: str
    boxes: FakeBoxManager
    session: Session
    stop: asyncio.Event
    task: asyncio.Task[bool]
    hub_task: asyncio.Task[None]
    runner: WorkstreamRunner

    async def stopped(self) -> bool | BaseException:
        """How the session ended: True/False (authenticated) or the exception (Fatal …)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.task), 10)
        except BaseException as err:  # noqa: BLE001 - the outcome is what the test asserts
            return err


@dataclass
class MemoryCluster:
    root: Path
    llm_url: str = ""
    hub_version: str = "test"  # "test" is no release: every spoke version is accepted
    clock: FakeClock = field(default_factory=FakeClock)
    wall: FakeClock = field(default_factory=lambda: FakeClock(1_800_000_000.0))
    spokes: dict[str, MemorySpoke] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = Store(self.root / "hub.db", clock=self.wall)
        self.registry = Registry(self.store, PIN, Limits(), self.hub_version, clock=self.clock,
                                 wall_clock=self.wall, tick_s=3600)
        self.boxes = BoxService(self.store, self.registry)
        self.workstreams = WorkstreamService(self.store, self.registry, ModelsConfig,
                                             clock=self.wall, monotonic=self.clock)

    async def __aenter__(self) -> MemoryCluster:
        await self.store.open()
        self.workstreams.start_scheduler()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for spoke in self.spokes.values():
            spoke.stop.set()
        for spoke in self.spokes.values():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(spoke.task, 10)
            await spoke.runner.shutdown()
            await spoke.boxes.close()
        await self.workstreams.stop()
        await self.registry.close_all(timeout_s=5)
        await self.store.close()

    async def token(self, name: str, ttl_s: float = 3600) -> JoinToken:
        token_id, secret = new_id("tok"), new_secret()
        await self.store.add_token(token_id, name, hash_secret(secret), ttl_s)
        return JoinToken(url="https://hub.test", pin=PIN, token_id=token_id, secret=secret, name=name)

    async def join(self, name: str, *, slots: int = 4, labels: tuple[str, ...] = (),
                   token: JoinToken | None = None, wait: bool = True,
                   remote: str | None = None, version: str = "test") -> MemorySpoke:
        """Enroll (the first time) or reconnect spoke ``name`` over a new pipe."""
        known = self.spokes.get(name)
        data_dir = self.root / f"spoke-{name}"
        identity = Identity(data_dir)
        state = identity.load_state() or SpokeState(hub_url="https://hub.test", pin=PIN, name=name,
                                                    enrolled=False)
        if not state.enrolled:
            identity.save_state(state)
        boxes = known.boxes if known else FakeBoxManager(name, images={IMAGE}, root=data_dir / "boxes")
        policy = Policy(allowed_images=(IMAGE,), labels=labels)
        local = {"local": ModelSpec(alias="local", provider="openai", base_url=self.llm_url,
                                    api_key="sk-test", model="m-local")} if self.llm_url else {}
        runner = WorkstreamRunner(boxes, policy, default_image=IMAGE, max_workstreams=slots,
                                  local_models=local)
        dispatcher = Dispatcher(name, "test", boxes, policy, 64 * 1024, workstreams=runner)
        rt = SpokeRuntime(identity=identity, state=state, dispatcher=dispatcher, version=version,
                          labels=labels, token=None if state.enrolled else (token or await self.token(name)),
                          workstreams=runner, models=tuple(local))
        hub_end, spoke_end = memory_pipe()
        hub_task = asyncio.create_task(self.registry.serve_link(hub_end, remote or f"memory:{name}"))
        session = Session(rt, spoke_end, clock=self.clock, tick_s=3600)
        stop = asyncio.Event()
        task = asyncio.create_task(session.run(stop))
        spoke = MemorySpoke(name, boxes, session, stop, task, hub_task, runner)
        self.spokes[name] = spoke
        if wait:
            await self.until(lambda: self.registry.live(name) is not None and not task.done(),
                             f"spoke {name} to connect")
            await self.settled(name)
        return spoke

    async def settled(self, name: str) -> None:
        """Until the connect-time reconcile and recovery of ``name`` ran (they are calls)."""
        for _ in range(200):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)

    async def drop(self, name: str) -> None:
        """The spoke process dies: its connection goes without a goodbye, its agents with it."""
        spoke = self.spokes[name]
        await spoke.session.transport.close(1006, "spoke died")
        await spoke.stopped()
        await spoke.runner.shutdown()
        await self.until(lambda: self.registry.live(name) is None, f"hub to see {name} gone")

    @staticmethod
    async def until(predicate: object, what: str, timeout: float = 10.0) -> None:
        """Wait for something that must happen (the timeout only bounds a hang)."""
        assert callable(predicate)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)


__all__ = ["Fatal", "IMAGE", "MemoryCluster", "MemorySpoke", "PIN"]
