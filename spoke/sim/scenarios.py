"""What ``spoke sim`` runs: connect the fleet, play a scenario, report what was measured.

Scenarios (``--scenario``), each after all spokes connected (``connect_s``):

- **steady**: load at ``rate`` for ``duration_s`` (pings; every ``box_every``-th a box
  create/exec/destroy; ``workstreams`` agent replies); every call must be answered.
- **burst**: ``burst`` pings at once over ``burst_spread`` spokes, repeated while the duration
  lasts; every call must be answered.
- **crash**: under load, ``fraction`` of the spokes crash (``fault`` kill: sockets aborted, no
  goodbye) or are cut off (``fault`` partition: nothing flows); ``lost_detect_s`` is how long
  until the hub lists every one of them as lost; then they come back (``recover_s``).
- **churn**: every ``churn_every_s``, ``fraction`` of the spokes crash and restart ``down_s``
  later; each wave's reconnect time; at the end all must be back, as the hub sees it too.

In every scenario ``slow_fraction`` of the spokes can get ``slow_ms`` of added network latency,
and every outage the fleet saw (a hub restart, say) is reported with its length: the
reconnect-storm duration. The report is a dict (``--json`` prints it); ``problems`` lists what
went wrong, and ``ok`` is true when nothing did. Pinned by tests/sim/test_spoke_sim.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from spoke.sim.fleet import Fleet, FleetOptions, SimSpoke
from spoke.sim.load import HubApi, Load, hub_states, until_hub_says

Say = Callable[[str], None]
FAULT_CODES = {"unavailable"}  # what calls to a spoke that just crashed may fairly answer


@dataclass
class Scenario:
    name: str = "steady"
    duration_s: float = 30.0
    rate: float = 50.0
    box_every: int = 10
    workstreams: int = 0
    burst: int = 2000
    burst_spread: int = 200
    fraction: float = 0.1
    fault: str = "kill"
    churn_every_s: float = 5.0
    down_s: float = 1.0
    slow_ms: float = 0.0
    slow_fraction: float = 0.0
    connect_timeout_s: float = 600.0
    detect_timeout_s: float = 120.0


@dataclass
class Run:
    """One simulation's moving parts, handed to the scenario functions."""

    fleet: Fleet
    sc: Scenario
    api: HubApi | None
    load: Load | None
    stop: asyncio.Event
    say: Say
    rng: random.Random
    report: dict[str, Any]

    def problem(self, text: str) -> None:
        self.report["problems"].append(text)
        self.say(f"PROBLEM: {text}")

    async def pause(self, seconds: float) -> None:
        """Sleep, unless told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))

    def victims(self) -> list[SimSpoke]:
        live = [s for s in self.fleet.spokes if s.up and s.connected]
        return self.rng.sample(live, min(len(live), max(1, round(self.sc.fraction * len(live)))))

    def background_load(self) -> asyncio.Task[dict[str, float]] | None:
        if self.load is None:
            return None
        return asyncio.get_running_loop().create_task(
            self.load.steady(self.sc.duration_s, self.sc.rate, self.sc.box_every, self.stop))

    def load_errors(self, allowed: set[str]) -> int:
        if self.load is None:
            return 0
        return sum(n for t in self.load.timings.values() for code, n in t.errors.items()
                   if code not in allowed)


async def simulate(options: FleetOptions, sc: Scenario, api: HubApi | None,
                   stop: asyncio.Event, say: Say) -> dict[str, Any]:
    """Connect ``options.count`` simulated spokes, run scenario ``sc``, stop them cleanly."""
    fleet = Fleet(options, say)
    report: dict[str, Any] = {"scenario": sc.name, "count": options.count,
                              "hub": fleet.state.hub_url, "problems": []}
    run = Run(fleet, sc, api, Load(api, fleet) if api is not None else None, stop, say,
              random.Random(), report)
    saver = asyncio.get_running_loop().create_task(fleet.save_forever())
    try:
        say(f"connecting {options.count} simulated spokes ({fleet.state.prefix}-…) to "
            f"{fleet.state.hub_url}")
        report["connect_s"] = await fleet.connect_all(sc.connect_timeout_s)
        await fleet.save()
        if report["connect_s"] is None:
            run.problem(f"only {fleet.n_connected} of {options.count} connected"
                        + (f"; refused: {dict(fleet.failures)}" if fleet.failures else ""))
        else:
            say(f"all {options.count} connected in {report['connect_s']:.2f} s")
            if api is not None:
                seen = await hub_states(api, {s.name for s in fleet.spokes})
                report["hub_connected"] = sum(1 for st in seen.values() if st == "connected")
                if report["hub_connected"] < options.count:
                    run.problem(f"the hub lists {report['hub_connected']} of them connected")
            _slow_down(run)
            await SCENARIOS[sc.name](run)
        if run.load is not None:
            await run.load.drain()
            report["load"] = run.load.summary()
        report["outages"] = [{"started_at": o.started_at, "ended_at": o.ended_at,
                              "most_missing": o.most_missing, "seconds": o.seconds}
                             for o in fleet.outages]
    finally:
        saver.cancel()
        await fleet.close()
        report["fleet"] = fleet.summary()
    report["ok"] = not report["problems"]
    return report


def _slow_down(run: Run) -> None:
    if run.sc.slow_ms <= 0 or run.sc.slow_fraction <= 0:
        return
    spokes = run.fleet.spokes
    slow = run.rng.sample(spokes, max(1, round(run.sc.slow_fraction * len(spokes))))
    for spoke in slow:
        spoke.link.delay_s = run.sc.slow_ms / 1000
    run.report["slow"] = {"spokes": len(slow), "added_ms": run.sc.slow_ms}


async def steady(run: Run) -> None:
    if run.load is None:
        run.say(f"no API key: holding the connections for {run.sc.duration_s:.0f} s, no load")
        await run.pause(run.sc.duration_s)
        return
    load = run.load
    agents = [load.workstream(s) for s in
              [run.load.pick() for _ in range(run.sc.workstreams)] if s is not None]
    results = await asyncio.gather(
        load.steady(run.sc.duration_s, run.sc.rate, run.sc.box_every, run.stop),
        *agents, return_exceptions=True)
    if isinstance(results[0], dict):
        run.report["throughput"] = results[0]
    if run.load_errors(set()):
        run.problem(f"{run.load_errors(set())} calls failed")


async def burst(run: Run) -> None:
    if run.load is None:
        run.problem("the burst scenario needs an API key (--hub-dir or --api-key)")
        return
    bursts: list[dict[str, float]] = []
    deadline = time.monotonic() + run.sc.duration_s
    while not run.stop.is_set() and (not bursts or time.monotonic() < deadline) and len(bursts) < 20:
        bursts.append(await run.load.burst(run.sc.burst, run.sc.burst_spread))
        run.say(f"burst of {run.sc.burst}: {bursts[-1]['seconds']:.3f} s")
        await run.pause(1.0)
    run.report["bursts"] = bursts
    if run.load_errors(set()):
        run.problem(f"{run.load_errors(set())} calls failed")


async def crash(run: Run) -> None:
    background = run.background_load()
    await run.pause(min(2.0, run.sc.duration_s / 4))
    victims = run.victims()
    names = {v.name for v in victims}
    sessions = {v.name: v.sessions for v in victims}
    run.say(f"{run.sc.fault}: {len(victims)} spokes")
    started = time.monotonic()
    if run.sc.fault == "partition":
        for spoke in victims:
            spoke.link.partition(True)
    else:
        await asyncio.gather(*(v.crash() for v in victims))
    run.report["fault"] = {"kind": run.sc.fault, "spokes": len(victims)}
    if run.api is not None:
        lost = await until_hub_says(run.api, names, {"lost"}, run.sc.detect_timeout_s)
        run.report["lost_detect_s"] = None if lost is None else time.monotonic() - started
        if lost is None:
            run.problem(f"the hub did not list all {len(victims)} as lost within "
                        f"{run.sc.detect_timeout_s:.0f} s")
        else:
            run.say(f"the hub lists all {len(victims)} as lost after "
                    f"{run.report['lost_detect_s']:.2f} s")
    back = time.monotonic()
    for spoke in victims:
        if run.sc.fault == "partition":
            spoke.link.partition(False)
        else:
            spoke.restart()
    await _all_back(run, victims, back, "recover_s", sessions)
    if background is not None:
        run.report["throughput"] = await background
    if run.load_errors(FAULT_CODES):
        run.problem(f"{run.load_errors(FAULT_CODES)} calls failed other than 'unavailable'")


async def churn(run: Run) -> None:
    background = run.background_load()
    waves: list[dict[str, Any]] = []
    deadline = time.monotonic() + run.sc.duration_s
    while not run.stop.is_set() and (not waves or time.monotonic() < deadline):
        await run.pause(min(run.sc.churn_every_s, max(0.0, deadline - time.monotonic())))
        victims = run.victims()
        await asyncio.gather(*(v.crash() for v in victims))
        await run.pause(run.sc.down_s)
        back = time.monotonic()
        for spoke in victims:
            spoke.restart()
        ok = await run.fleet.wait(lambda vs=victims: all(v.connected for v in vs),  # type: ignore[misc]
                                  run.sc.detect_timeout_s)
        waves.append({"spokes": len(victims),
                      "reconnect_s": round(time.monotonic() - back, 3) if ok else None})
        run.say(f"churn wave: {len(victims)} crashed, back in "
                f"{waves[-1]['reconnect_s'] if ok else 'NOT ALL'} s")
    run.report["waves"] = waves
    await _all_back(run, run.fleet.spokes, time.monotonic(), "final_s")
    if background is not None:
        run.report["throughput"] = await background
    if any(w["reconnect_s"] is None for w in waves):
        run.problem("not every churn wave came back")
    if run.load_errors(FAULT_CODES):
        run.problem(f"{run.load_errors(FAULT_CODES)} calls failed other than 'unavailable'")


async def _all_back(run: Run, spokes: list[SimSpoke], since: float, key: str,
                    sessions: dict[str, int] | None = None) -> None:
    """Until every one of ``spokes`` is connected again — in a session newer than the one
    counted in ``sessions``, when given — as the spokes and the hub see it."""
    before = sessions or {}

    def back() -> bool:
        return all(s.connected and s.sessions > before.get(s.name, -1) for s in spokes)

    ok = await run.fleet.wait(back, run.sc.detect_timeout_s)
    if not ok:
        run.problem(f"{sum(1 for s in spokes if not s.connected)} spokes did not come back")
        run.report[key] = None
        return
    run.report[key] = round(time.monotonic() - since, 3)
    if run.api is not None:
        seen = await until_hub_says(run.api, {s.name for s in spokes}, {"connected"},
                                    run.sc.detect_timeout_s)
        if seen is None:
            run.problem("the hub does not list them all connected again")


SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "steady": steady, "burst": burst, "crash": crash, "churn": churn}
