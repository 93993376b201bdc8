"""Load through the hub's REST API onto the simulated spokes, and what it measured.

The simulator drives the hub the way operators and programs do: ``POST /api/spokes/NAME/ping``
(a no-op verb round trip; the hub answers with how long the call took *inside the hub*, so
``ping (hub)`` is the hub-side dispatch latency and ``ping (client)`` adds HTTP), box create,
exec and destroy on the simulated boxes, and workstreams answered by the simulated model.
Load is open-loop: operations start at the asked rate whether or not earlier ones have
answered, so a slow hub shows as latency, not as a politely lower rate.

The API client is passed in (:class:`HubApi`: :class:`client.async_client.AsyncHubClient`
fits), so this package keeps to the spoke's side of the layering. Pinned by
tests/sim/test_spoke_sim.py and tests/sim/test_sim_parts.py (percentiles).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from spoke.sim.agent import SIM_MODEL, SIM_REPLY_MARK
from spoke.sim.fleet import SIM_IMAGES, Fleet

MAX_IN_FLIGHT = 2000  # beyond this the load generator itself is saturated: skipped, and said


class HubApi(Protocol):
    """What the simulator needs of a hub API client."""

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any: ...

    def exec_stream(self, box_id: str, cmd: list[str], timeout_s: float | None = None,
                    env: dict[str, str] | None = None,
                    workdir: str | None = None) -> AsyncIterator[dict[str, Any]]: ...

    async def send_and_wait(self, message: str, *, ws_id: str | None = None,
                            spoke: str | None = None, label: str | None = None,
                            model: str | None = None, auto_approve: bool = False,
                            image: str | None = None, on_event: Any = None) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank (an observed value); 0.0 for none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


@dataclass
class Timings:
    """Durations (seconds) of one kind of operation, and its failures by code."""

    values: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str = ""

    def summary(self) -> dict[str, Any]:
        ms = [v * 1000 for v in self.values]
        out: dict[str, Any] = {"count": len(ms), "errors": sum(self.errors.values())}
        if ms:
            out.update({f"p{q}_ms": round(percentile(ms, q / 100), 3) for q in (50, 95, 99)})
            out["max_ms"] = round(max(ms), 3)
        if self.errors:
            out["error_codes"] = dict(self.errors.most_common(5))
            out["last_error"] = self.last_error
        return out


def error_code(err: BaseException) -> str:
    code = getattr(err, "code", None)
    return str(getattr(code, "value", code)) if code is not None else type(err).__name__


class Load:
    """Operations against connected simulated spokes, timed by kind."""

    def __init__(self, api: HubApi, fleet: Fleet, rng: random.Random | None = None) -> None:
        self.api, self.fleet = api, fleet
        self.rng = rng or random.Random()
        self.timings: dict[str, Timings] = defaultdict(Timings)
        self.skipped = 0
        self._in_flight: set[asyncio.Task[None]] = set()

    def pick(self) -> str | None:
        """A spoke connected now (from the spokes' side), or None."""
        live = [s for s in self.fleet.spokes if s.connected]
        return self.rng.choice(live).name if live else None

    async def _timed(self, kind: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            result = await call
        except Exception as err:  # a failed call is a measurement too
            self.timings[kind].errors[error_code(err)] += 1
            self.timings[kind].last_error = str(err)[:300]
            raise
        self.timings[kind].values.append(time.perf_counter() - started)
        return result

    async def ping(self, name: str, count: int = 1, concurrency: int = 1) -> None:
        """One no-op round trip (``count`` of them for a burst's share): the request's time as
        the client saw it, and for one call the hub's own measure of it."""
        kind = "ping (client)" if count == 1 else "burst request"
        answer = await self._timed(kind, self.api.request(
            "POST", f"/api/spokes/{name}/ping", {"count": count, "concurrency": concurrency}))
        if count == 1:
            self.timings["ping (hub)"].values.append(float(answer["seconds"]))

    async def box_cycle(self, name: str) -> None:
        """Create a simulated box, run ``echo`` in it, destroy it: three timed verbs."""
        box = await self._timed("box.create", self.api.request(
            "POST", "/api/boxes", {"spoke": name, "image": SIM_IMAGES[0]}))
        try:
            async def run() -> None:
                events = [e async for e in self.api.exec_stream(box["id"], ["echo", "sim"])]
                if not events or events[-1].get("exit_code") != 0:
                    raise RuntimeError(f"exec answered {events[-1:]}")
            await self._timed("box.exec", run())
        finally:
            await self._timed("box.destroy", self.api.request("DELETE", f"/api/boxes/{box['id']}"))

    async def workstream(self, name: str) -> None:
        """A workstream on ``name`` with the simulated model: the reply, then close it."""
        reply = await self._timed("ws.reply", self.api.send_and_wait(
            "hello from spoke sim", spoke=name, model=SIM_MODEL))
        try:
            if reply.get("error") or SIM_REPLY_MARK not in str(reply.get("answer", "")):
                self.timings["ws.reply"].errors["wrong reply"] += 1
        finally:
            await self._timed("ws.close", self.api.request("POST", f"/api/ws/{reply['id']}/close"))

    def launch(self, op: Callable[[str], Awaitable[None]]) -> bool:
        """Start ``op`` on a random connected spoke without waiting for it."""
        name = self.pick()
        if name is None or len(self._in_flight) >= MAX_IN_FLIGHT:
            self.skipped += 1
            return False

        async def guarded() -> None:
            try:
                await op(name)
            except Exception:  # counted by _timed
                pass

        task = asyncio.get_running_loop().create_task(guarded())
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return True

    async def steady(self, seconds: float, rate: float, box_every: int,
                     stop: asyncio.Event) -> dict[str, float]:
        """Pings at ``rate`` a second for ``seconds`` (every ``box_every``-th operation a box
        cycle instead); what was started, and how fast."""
        if rate <= 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            return {"ops": 0, "seconds": seconds, "per_second": 0.0}
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = 0
        while not stop.is_set() and (now := loop.time()) - started < seconds:
            due = started + n / rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            n += 1
            self.launch(self.box_cycle if box_every and n % box_every == 0 else self.ping)
        await self.drain()
        took = loop.time() - started
        return {"ops": n, "seconds": round(took, 3), "per_second": round(n / took, 1)}

    async def burst(self, calls: int, spread: int) -> dict[str, float]:
        """``calls`` pings at once over ``spread`` connected spokes (one request each with its
        share, all its calls concurrent): seconds until every call was answered."""
        live = [s.name for s in self.fleet.spokes if s.connected]
        targets = self.rng.sample(live, min(spread, len(live)))
        if not targets:
            return {"calls": 0, "seconds": 0.0, "per_second": 0.0}
        share, extra = divmod(calls, len(targets))
        counts = [share + (1 if i < extra else 0) for i in range(len(targets))]
        started = time.perf_counter()
        results = await asyncio.gather(
            *(self.ping(name, count=c, concurrency=min(c, 256))
              for name, c in zip(targets, counts, strict=True) if c > 0),
            return_exceptions=True)
        took = time.perf_counter() - started
        failed = sum(1 for r in results if isinstance(r, BaseException))
        return {"calls": calls, "spokes": len(targets), "seconds": round(took, 4),
                "per_second": round(calls / took, 1), "failed_requests": failed}

    async def drain(self, timeout: float = 60.0) -> None:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)

    def summary(self) -> dict[str, Any]:
        out = {kind: t.summary() for kind, t in sorted(self.timings.items())}
        if self.skipped:
            out["skipped"] = {"count": self.skipped}
        return out

    def errors(self) -> int:
        return sum(sum(t.errors.values()) for t in self.timings.values())


async def hub_states(api: HubApi, names: set[str]) -> dict[str, str]:
    """The state the hub lists for each of ``names`` (``GET /api/spokes``)."""
    rows = await api.request("GET", "/api/spokes")
    return {r["name"]: str(r.get("state") or ("connected" if r.get("connected") else "lost"))
            for r in rows if r["name"] in names}


async def until_hub_says(api: HubApi, names: set[str], states: set[str], timeout: float,
                         every_s: float = 0.25) -> float | None:
    """Seconds until the hub lists every one of ``names`` in one of ``states``; None if not
    within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        seen = await hub_states(api, names)
        if len(seen) == len(names) and all(s in states for s in seen.values()):
            return time.monotonic() - started
        await asyncio.sleep(every_s)
    return None
