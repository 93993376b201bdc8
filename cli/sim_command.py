"""``spoke sim``: parse the options, then hand over to :mod:`spoke.sim` (all the work is there)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli.common import data_dir_option, fail

SCENARIOS = ("steady", "burst", "crash", "churn")


@click.command()
@data_dir_option("sim", "SPOKEHUB_SIM_DIR")
@click.option("--count", type=click.IntRange(1, 100_000), required=True,
              help="How many simulated spokes (named PREFIX-00001, PREFIX-00002, …).")
@click.option("--token", default=None, metavar="TOKEN",
              help="A multi-use join token (hub token create --name PREFIX --uses N); not "
                   "needed once the data dir holds enrolled spokes of that hub.")
@click.option("--token-file", type=click.File("r"), default=None, metavar="FILE",
              help="Read the token from FILE ('-': standard input) instead.")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="steady", show_default=True,
              help="steady load, bursts, a crash (lost detection), or churn (reconnects).")
@click.option("--duration", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds the scenario runs after all spokes connected.")
@click.option("--rate", type=click.FloatRange(min=0), default=50.0, show_default=True,
              help="Operations a second through the hub's API (0: no load, just connections).")
@click.option("--box-every", type=click.IntRange(0), default=10, show_default=True,
              help="Every Nth operation is a box create + exec + destroy, the rest pings (0: "
                   "pings only).")
@click.option("--workstreams", type=click.IntRange(0), default=0, show_default=True,
              help="Agent workstreams to run (steady), answered by the simulated model.")
@click.option("--burst", type=click.IntRange(1), default=2000, show_default=True,
              help="Calls in one burst (burst scenario).")
@click.option("--fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of the spokes a crash or a churn wave hits.")
@click.option("--fault", type=click.Choice(["kill", "partition"]), default="kill",
              show_default=True,
              help="crash scenario: kill (sockets dropped, no goodbye) or partition "
                   "(nothing flows until the hub has called them lost).")
@click.option("--churn-every", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between churn waves.")
@click.option("--slow-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Network latency added each way for --slow-fraction of the spokes.")
@click.option("--slow-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the spokes that get --slow-ms.")
@click.option("--box-latency-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Simulated box create/exec latency.")
@click.option("--reply-latency-ms", type=click.FloatRange(min=0), default=50.0,
              show_default=True, help="Simulated model reply latency.")
@click.option("--hub-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The hub's data dir: its admin.json gives the API key for load and checks.")
@click.option("--api-key", envvar="SPOKEHUB_API_KEY", default=None,
              help="An operator API key for load and hub-side checks (env SPOKEHUB_API_KEY).")
@click.option("--per-address", type=click.IntRange(1, 60_000), default=200, show_default=True,
              help="Spokes per source address (127.0.0.2, .3, … against a loopback hub; keep "
                   "it under the hub's --max-connections-per-ip).")
@click.option("--dial-concurrency", type=click.IntRange(1, 10_000), default=200,
              show_default=True, help="TLS connections being set up at once.")
@click.option("--connect-timeout", type=click.FloatRange(min=1), default=600.0,
              show_default=True, help="Seconds to wait for all spokes to connect.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--log-level", default="ERROR", show_default=True,
              help="DEBUG, INFO, WARNING or ERROR (the spokes' own log lines).")
def sim(data_dir: Path, token: str | None, token_file: Any, hub_dir: Path | None,
        api_key: str | None, as_json: bool, log_level: str, **opts: Any) -> None:
    """Run COUNT simulated spokes in this process against a real hub and measure it.

    Each is a real spoke session over simulated boxes and agent replies (no Docker, no LLM).
    Prints connect time, verb latency, throughput, lost-detection and reconnect times.

    \b
    Example:  hub token create --name sim --uses 1000 --ttl 1h
              spoke sim --count 1000 --token TOKEN --hub-dir ~/.local/share/spokehub/hub
    """
    from cli.common import setup_logging
    from protocol.tokens import JoinToken, TokenError
    from spoke.sim.boxes import SimLatency
    from spoke.sim.fleet import FleetOptions
    from spoke.sim.report import main
    from spoke.sim.scenarios import Scenario

    if token is not None and token_file is not None:
        fail("give the join token with --token or --token-file, not both", 2)
    if token_file is not None:
        token = token_file.read(64 * 1024).strip()
    try:
        parsed = JoinToken.decode(token) if token else None
    except TokenError as err:
        fail(str(err), 2)
        return
    setup_logging(log_level)
    box_s = opts["box_latency_ms"] / 1000
    options = FleetOptions(
        count=opts["count"], data_dir=data_dir, token=parsed,
        latency=SimLatency(create_s=box_s, exec_s=box_s),
        reply_latency_s=opts["reply_latency_ms"] / 1000, per_address=opts["per_address"],
        dial_slots=opts["dial_concurrency"])
    scenario = Scenario(
        name=opts["scenario"], duration_s=opts["duration"], rate=opts["rate"],
        box_every=opts["box_every"], workstreams=opts["workstreams"], burst=opts["burst"],
        fraction=opts["fraction"], fault=opts["fault"], churn_every_s=opts["churn_every"],
        slow_ms=opts["slow_ms"], slow_fraction=opts["slow_fraction"],
        connect_timeout_s=opts["connect_timeout"])
    sys.exit(main(options, scenario, _api_factory(hub_dir, api_key, parsed, data_dir),
                  as_json=as_json))


def pooled_client(url: str, api_key: str, pin: str | None) -> Any:
    """The SDK's async client (it keeps one pinned TLS context, so connections are reused)."""
    from client.async_client import AsyncHubClient

    return AsyncHubClient(url, api_key, pin)


def _api_factory(hub_dir: Path | None, api_key: str | None, token: Any,
                 data_dir: Path) -> Any:
    """How to reach the hub's API: --api-key (with the token's, or the saved, URL and pin),
    else the hub data dir's admin.json; None when neither is given (no load)."""
    from client.http_client import admin_credentials
    from spoke.sim.identity import FleetState, SimStateError

    if api_key:
        try:
            state = FleetState.load_or_create(data_dir, token)
        except SimStateError as err:
            fail(str(err), 2)
        return lambda: pooled_client(state.hub_url, api_key, state.pin or None)
    if hub_dir is not None:
        url, key, pin = admin_credentials(hub_dir)
        return lambda: pooled_client(url, key, pin)
    return None
