"""``hub doctor`` and ``spoke doctor``: check a data dir, its process and what it needs.

Thin: the checks are :mod:`hub.doctor` and :mod:`spoke.doctor`, the result type and its
rendering :mod:`protocol.doctor`; here are the click commands, who holds the data dir's run
lock (``cli/runlock.py``, which ``hub/`` and ``spoke/`` do not import), and the printing.
Exit 0 when no check failed (warnings included), 1 otherwise. docs/troubleshooting.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.common import data_dir_option, json_option
from protocol import doctor as d

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")
spoke_dir = data_dir_option("spoke", "SPOKEHUB_SPOKE_DIR")


def _holder(data_dir: Path, lock: str) -> Any:
    """The live process holding ``data_dir/lock`` (None if none, or if that cannot be read)."""
    from cli.runlock import holder

    try:
        return holder(data_dir, lock)
    except OSError:
        return None


def _report(kind: str, data_dir: Path, checks: list[d.Check], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(d.document(kind, str(data_dir), checks), indent=2))
    else:
        for line in d.render(checks):
            click.echo(line)
        click.echo(d.summary(checks) + (f" (what to do: {d.TROUBLESHOOTING})"
                                        if d.exit_code(checks) else ""))
    raise SystemExit(d.exit_code(checks))


@click.command("doctor")
@hub_dir
@json_option
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The certificate `hub serve --tls-cert` was given (default: tls.crt in the "
                   "data dir).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The key `hub serve --tls-key` was given (default: tls.key in the data dir).")
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=5.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the hub and the Docker engine.")
@click.option("--database", envvar="SPOKEHUB_DATABASE_URL", show_envvar=True, default=None,
              metavar="URL", help="The hub's --database, when not in its hub.toml.")
def hub_doctor(data_dir: Path, as_json: bool, tls_cert: Path | None, tls_key: Path | None,
               timeout: float, database: str | None) -> None:
    """Check this hub: data dir and file modes, TLS certificate and pin, database and schema,
    the running hub's /healthz, the Docker engine and the clock.

    One line per check (ok, warn, FAIL, skip) with the fix for what is wrong; exit 1 if any
    check failed. Changes nothing. See docs/troubleshooting.md."""
    from cli.config_file import database_for
    from cli.runlock import HUB_LOCK
    from hub.doctor import run
    from hub.doctor_facts import HubContext, Running

    running = _holder(data_dir, HUB_LOCK) if data_dir.is_dir() else None
    ctx = HubContext(data_dir, running=Running(running.pid, running.url) if running else None,
                     tls_cert=tls_cert, tls_key=tls_key, timeout_s=timeout,
                     database=database_for(data_dir, database))
    _report("hub", data_dir, run(ctx), as_json)


@click.command("doctor")
@spoke_dir
@json_option
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=5.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the hub and the Docker engine.")
def spoke_doctor(data_dir: Path, as_json: bool, timeout: float) -> None:
    """Check this spoke: data dir and identity key, enrollment, the Docker engine and the
    default image, workspace size limits, and the hub: reachable, its certificate matching the
    pin, its /healthz and its clock.

    One line per check (ok, warn, FAIL, skip) with the fix for what is wrong; exit 1 if any
    check failed. Changes nothing and sends the hub nothing secret. See
    docs/troubleshooting.md."""
    from cli.runlock import SPOKE_LOCK
    from spoke.doctor import SpokeContext, run

    running = _holder(data_dir, SPOKE_LOCK) if data_dir.is_dir() else None
    ctx = SpokeContext(data_dir, running_pid=running.pid if running else None, timeout_s=timeout)
    _report("spoke", data_dir, run(ctx), as_json)
