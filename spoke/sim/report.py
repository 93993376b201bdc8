"""``spoke sim`` end to end: the event loop, signals, the open-file limit, and the report.

``cli/spoke_cli.py`` only parses options and calls :func:`main`. The simulation runs on a
:class:`~spoke.sim.net.SimLoop`; SIGINT/SIGTERM end the scenario early (the report is still
printed: a benchmark stops a long ``steady`` run this way). Human lines go to stderr as things
happen; the report goes to stdout at the end, as text or, with ``--json``, as one JSON object.
The exit status is 0 when the report has no problems, 1 otherwise, 2 for unusable options.
Pinned by tests/sim/test_spoke_sim.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from spoke.sim import net
from spoke.sim.fleet import FleetOptions
from spoke.sim.identity import SimStateError
from spoke.sim.load import HubApi
from spoke.sim.scenarios import Scenario, simulate


def main(options: FleetOptions, scenario: Scenario, api: Callable[[], HubApi] | None, *,
         as_json: bool) -> int:
    """Run the simulation; print the report; the exit status."""

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    limit = net.raise_fd_limit(options.count + 1024)
    if limit < options.count + 64:
        say(f"warning: this process may open only {limit} files, fewer than the "
            f"{options.count} connections asked for (ulimit -n)")

    async def go() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        client = api() if api is not None else None
        try:
            return await simulate(options, scenario, client, stop, say)
        finally:
            if client is not None:
                await client.close()

    try:
        report = net.run(go())
    except SimStateError as err:
        say(f"spoke sim: {err}")
        return 2
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True), flush=True)
    else:
        print("\n".join(render(report)), flush=True)
    return 0 if report["ok"] else 1


def _ms(row: dict[str, Any]) -> str:
    if not row.get("count"):
        return f"{row.get('errors', 0)} errors"
    text = (f"n={row['count']:<6} p50 {row['p50_ms']:8.3f} ms  p95 {row['p95_ms']:8.3f} ms  "
            f"p99 {row['p99_ms']:8.3f} ms")
    return text + (f"  errors {row['errors']} {row.get('error_codes', '')}" if row["errors"] else "")


def render(report: dict[str, Any]) -> list[str]:
    """The report as lines for a terminal."""
    lines = [f"spoke sim: {report['scenario']}, {report['count']} spokes -> {report['hub']}"]
    connect = report.get("connect_s")
    lines.append("  connect time (all connected): "
                 + (f"{connect:.2f} s" if connect is not None else "NOT ALL CONNECTED")
                 + (f" (the hub lists {report['hub_connected']} connected)"
                    if "hub_connected" in report else ""))
    if "slow" in report:
        lines.append(f"  slow: {report['slow']['spokes']} spokes with "
                     f"{report['slow']['added_ms']} ms added each way")
    if "throughput" in report:
        t = report["throughput"]
        lines.append(f"  throughput: {t['ops']} operations in {t['seconds']} s "
                     f"({t['per_second']}/s)")
    for kind, row in report.get("load", {}).items():
        lines.append(f"  {kind:<14} " + (_ms(row) if kind != "skipped" else
                                         f"{row['count']} (load generator saturated)"))
    for b in report.get("bursts", []):
        lines.append(f"  burst: {b['calls']} calls over {b.get('spokes', 0)} spokes in "
                     f"{b['seconds']:.3f} s ({b['per_second']}/s)")
    if "fault" in report:
        lost = report.get("lost_detect_s")
        lines.append(f"  {report['fault']['kind']}: {report['fault']['spokes']} spokes; "
                     "lost-detection time: "
                     + (f"{lost:.3f} s" if lost is not None else "not measured"))
        if report.get("recover_s") is not None:
            lines.append(f"  back after the fault in {report['recover_s']:.3f} s")
    for wave in report.get("waves", []):
        lines.append(f"  churn wave: {wave['spokes']} spokes back in {wave['reconnect_s']} s")
    for outage in report.get("outages", []):
        seconds = outage["seconds"]
        lines.append(f"  outage: up to {outage['most_missing']} spokes disconnected; "
                     + (f"all back in {seconds:.3f} s (reconnect storm)" if seconds is not None
                        else "not over when the run ended"))
    refused = report.get("fleet", {}).get("refused")
    if refused:
        lines.append(f"  refused by the hub: {refused}")
    lines.extend(f"  PROBLEM: {p}" for p in report["problems"])
    lines.append("  ok" if report["ok"] else "  NOT OK")
    return lines
