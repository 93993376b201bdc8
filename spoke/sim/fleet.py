"""N simulated spokes in one process: each the real connector, session and dispatcher over
simulated boxes and agents, and what the fleet saw of its connections.

A :class:`SimSpoke` is what ``spoke join`` wires together (spoke/service.py), with
:class:`~spoke.sim.boxes.SimBoxManager`, :class:`~spoke.sim.agent.SimRunner` and
:class:`~spoke.sim.identity.SimIdentity` in place of Docker, the LLM and the key file, and its
dial going through its :class:`~spoke.sim.net.SimLink`. It can crash (no goodbye; its boxes
survive as containers would, its commands and agents die), restart, or stop cleanly.

The :class:`Fleet` counts connected spokes from the spokes' side (a session authenticated;
its socket ended) and records every *outage*: from the moment fewer spokes are connected than
are up (not crashed) until all are back. A hub restart, a churn wave or a partition each shows
as one outage; its length is the reconnect-storm duration. Pinned by
tests/sim/test_spoke_sim.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.tokens import JoinToken
from protocol.version import VERSION
from spoke import connector
from spoke.backoff import Backoff
from spoke.dispatcher import Dispatcher
from spoke.policy import Policy
from spoke.sim.agent import SIM_MODEL, SimRunner
from spoke.sim.boxes import SimBoxManager, SimLatency
from spoke.sim.identity import FleetState, SimIdentity
from spoke.sim.net import CURRENT, SimLink, SimNetwork, source_for

log = logging.getLogger("spokehub.sim")
SIM_IMAGES = ("spokehub-sim", "spokehub-sandbox:bookworm")  # boxes of either are simulated


@dataclass
class FleetOptions:
    """How the simulated spokes are made (``spoke sim`` options)."""

    count: int
    data_dir: Path
    token: JoinToken | None = None
    latency: SimLatency = field(default_factory=SimLatency)
    reply_latency_s: float = 0.0
    max_boxes: int = 20
    max_workstreams: int = 2
    sources: bool = True  # spread links over 127.0.0.x (only against a loopback hub)
    per_address: int = 200
    dial_slots: int = 200


@dataclass
class Outage:
    """A time when fewer spokes were connected than were up (wall clock, seconds)."""

    started_at: float
    ended_at: float | None = None
    most_missing: int = 0

    @property
    def seconds(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


class SimSpoke:
    """One simulated spoke (see the module docstring)."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        opts = fleet.options
        self.fleet, self.index = fleet, index
        self.name = fleet.state.name(index)
        loopback = fleet.state.hub_url.split("://", 1)[-1].startswith("127.")
        source = source_for(index - 1, opts.per_address) if opts.sources and loopback else None
        self.link = SimLink(self.name, fleet.network, source=source)
        self.boxes = SimBoxManager(self.name, opts.latency)
        self.policy = Policy(allowed_images=SIM_IMAGES, max_boxes=opts.max_boxes,
                             labels=("sim",))
        self.identity = SimIdentity(opts.data_dir, fleet.state, self.name)
        self.connected = False
        self.connected_at: float | None = None
        self.sessions = 0
        self.fatal: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        self.rt = self._runtime()

    def _runtime(self) -> connector.SpokeRuntime:
        """A fresh runtime, as a restarted spoke process has: new agents, same boxes."""
        opts = self.fleet.options
        runner = SimRunner(self.name, self.boxes, self.policy, image=SIM_IMAGES[0],
                           max_workstreams=opts.max_workstreams,
                           reply_latency_s=opts.reply_latency_s)
        state = self.fleet.state.spoke_state(self.name)
        return connector.SpokeRuntime(
            identity=self.identity, state=state,
            dispatcher=Dispatcher(self.name, VERSION, self.boxes, self.policy,
                                  chunk_bytes=64 * 1024, workstreams=runner),
            version=VERSION, labels=("sim",), token=opts.token, workstreams=runner,
            models=(SIM_MODEL,), backoff=Backoff(),
            on_connected=lambda _url: self.fleet.connected(self))

    @property
    def up(self) -> bool:
        return not self.link.down and self.fatal is None and self.task is not None

    def start(self) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(self.stop))

    async def _run(self, stop: asyncio.Event) -> None:
        CURRENT.set(self.link)  # this task's dials go through the spoke's link
        try:
            await connector.run(self.rt, stop)
        except connector.Fatal as err:
            self.fatal = str(err)
            self.fleet.failed(self)

    async def crash(self) -> None:
        """The spoke process dies: its socket is aborted (no goodbye), nothing is retried."""
        self.link.kill()
        self.stop.set()
        self.boxes.kill_execs()
        if self.rt.workstreams is not None:
            await self.rt.workstreams.shutdown()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
        self.fleet.lost(self.link)

    def restart(self) -> None:
        self.link.revive()
        self.rt = self._runtime()
        self.start()
        self.fleet.check()  # up and not yet connected: an outage starts now

    async def leave(self) -> None:
        """A clean stop: the session says goodbye (close 1000), as on SIGTERM."""
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
        if self.rt.workstreams is not None:
            await self.rt.workstreams.shutdown()


class Fleet:
    """The simulated spokes, their connection counts and outages (module docstring)."""

    def __init__(self, options: FleetOptions, say: Callable[[str], None] = lambda _m: None) -> None:
        self.options, self.say = options, say
        self.state = FleetState.load_or_create(options.data_dir, options.token)
        options.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # the hub's cert goes here
        self.network = SimNetwork(dial_slots=options.dial_slots, on_lost=self.lost)
        self.spokes = [SimSpoke(self, i) for i in range(1, options.count + 1)]
        self.by_link = {s.link: s for s in self.spokes}
        self.n_connected = 0
        self.outages: list[Outage] = []
        self.watching = False  # outages count once the first connect phase is over
        self.changed = asyncio.Event()
        self.failures: Counter[str] = Counter()

    # ------------------------------------------------------------- callbacks
    def connected(self, spoke: SimSpoke) -> None:
        if not spoke.connected:
            spoke.connected = True
            spoke.connected_at = time.time()
            spoke.sessions += 1
            self.n_connected += 1
        self.check()

    def lost(self, link: SimLink) -> None:
        spoke = self.by_link.get(link)
        if spoke is not None and spoke.connected and not link.transports:
            spoke.connected = False
            self.n_connected -= 1
        self.check()

    def failed(self, spoke: SimSpoke) -> None:
        self.failures[spoke.fatal or "?"] += 1
        self.check()

    def expected(self) -> int:
        return sum(1 for s in self.spokes if s.up)

    def check(self) -> None:
        self.changed.set()
        if not self.watching:
            return
        missing = self.expected() - self.n_connected
        current = self.outages[-1] if self.outages and self.outages[-1].ended_at is None else None
        if missing > 0:
            if current is None:
                current = Outage(started_at=time.time())
                self.outages.append(current)
            current.most_missing = max(current.most_missing, missing)
        elif current is not None:
            current.ended_at = time.time()

    # ------------------------------------------------------------- control
    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until ``predicate()`` holds (re-checked on every connection change) or ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
        return True

    def all_up_connected(self) -> bool:
        return self.n_connected >= self.expected()

    async def connect_all(self, timeout: float) -> float | None:
        """Start every spoke; seconds until all were connected (None: not within
        ``timeout``, or some were refused for good: see :attr:`failures`)."""
        started = time.monotonic()
        for spoke in self.spokes:
            spoke.start()
            await asyncio.sleep(0)  # let the first dials begin while the rest are made
        ok = await self.wait(lambda: self.n_connected + len(self._failed()) >= len(self.spokes),
                             timeout)
        self.watching = True
        if not ok or self._failed():
            return None
        return time.monotonic() - started

    def _failed(self) -> list[SimSpoke]:
        return [s for s in self.spokes if s.fatal is not None]

    async def save_forever(self, every_s: float = 2.0) -> None:
        """Write newly enrolled names to ``sim.json`` now and then (in a thread)."""
        while True:
            await asyncio.sleep(every_s)
            await self.save()

    async def save(self) -> None:
        if self.state.dirty:
            await asyncio.to_thread(self.state.save, self.options.data_dir)

    async def close(self, timeout: float = 30.0) -> None:
        """Every spoke stops cleanly (a goodbye each); the state is saved."""
        self.watching = False
        leaving = [asyncio.ensure_future(s.leave()) for s in self.spokes if s.task is not None]
        if leaving:
            _done, slow = await asyncio.wait(leaving, timeout=timeout)
            for task in slow:
                task.cancel()
        for spoke in self.spokes:
            await spoke.boxes.close()
        await self.save()

    def summary(self) -> dict[str, Any]:
        return {"count": len(self.spokes), "connected": self.n_connected,
                "up": self.expected(), "dials": self.network.dials,
                "refused": dict(self.failures)}
