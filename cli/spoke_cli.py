"""``spoke``: enroll this machine with a hub and serve its boxes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli.common import aliased_group, data_dir_option, env_vars, fail, version_option
from cli.doctor_command import spoke_doctor
from cli.sim_command import sim

spoke_dir = data_dir_option("spoke", "SPOKEHUB_SPOKE_DIR")


def _policy_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--allow-image",
                "allow_image",
                multiple=True,
                metavar="IMAGE",
                help="Image boxes may use (repeatable; default: the spokehub sandbox image).",
            ),
            click.option("--max-boxes", type=click.IntRange(1, 10_000), default=None,
                         help="Most boxes this spoke runs at once (default 20)."),
            click.option("--warm", "warm", multiple=True, metavar="IMAGE=N",
                         help="Keep N ready boxes of IMAGE (an allowed image), so a create "
                              "claims one instead of starting a container (repeatable; "
                              "they count against --max-boxes; N=0 drops a saved pool)."),
            click.option("--drain-timeout", type=click.FloatRange(0, 3600), default=None,
                         metavar="SECONDS", help="On SIGTERM, how long to let running calls "
                         "finish before leaving (default 10; the hub moves this spoke's "
                         "workstreams at once)."),
            click.option("--max-transfers", type=click.IntRange(1, 1000), default=None,
                         help="Most file transfers (box cp) in progress at once; more are "
                              "refused busy (default 8)."),
            click.option("--max-memory", default=None, help="Ceiling on a box's memory, e.g. 4g."),
            click.option("--max-cpus", type=click.FloatRange(min=0.01), default=None,
                         help="Ceiling on a box's CPUs (default 2)."),
            click.option(
                "--no-network", is_flag=True, default=None, help="Refuse boxes with network access."
            ),
            click.option(
                "--label",
                "labels",
                multiple=True,
                metavar="LABEL",
                help="Routing label (repeatable).",
            ),
            click.option("--runtime", default=None, help="Docker runtime for boxes, e.g. runsc."),
            click.option("--allow-root", is_flag=True, default=None,
                         help="Let boxes run as root when asked (hub box create --user 0); "
                              "by default they never do."),
            click.option("--max-workspace", default=None, metavar="SIZE",
                         help="Ceiling on a box's /workspace size, e.g. 20g (default 10g; "
                              "boxes get 1g unless they ask)."),
        click.option("--default-image", default=None, help="Image for workstream boxes (default: first allowed)."),
        click.option("--max-workstreams", type=click.IntRange(0, 1000), default=None,
                     help="Concurrent agent workstreams this spoke takes (default 4)."),
        click.option("--models-file", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="TOML with this spoke's own models ([models.ALIAS] like hub.toml)."),
            click.option("--log-level", default="INFO", show_default=True,
                         help="DEBUG, INFO, WARNING or ERROR."),
            click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
                         show_default=True,
                         help="text for people; json: one JSON object a line, with "
                              "trace_id/span_id when tracing (OTEL_EXPORTER_OTLP_ENDPOINT)."),
        ]
    ):
        fn = option(fn)
    return fn


@click.group(cls=aliased_group(), context_settings={"help_option_names": ["-h", "--help"]})
@version_option("spoke")
def main() -> None:
    """spokehub spoke: dial out to a hub and run sandboxed boxes on this machine."""


@env_vars("SPOKEHUB_SPOKE_", token="SPOKEHUB_JOIN_TOKEN", spoke_name="SPOKEHUB_SPOKE_NAME")
@main.command()
@spoke_dir
@_policy_options
@click.option("--token-file", type=click.File("r"), default=None, metavar="FILE",
              help="Read the join token from FILE ('-': standard input) instead of the command "
                   "line, where other users of this machine could read it in `ps`.")
@click.option("--insecure-http", is_flag=True,
              help="Accept a token whose hub URL is plain http:// (a hub behind a TLS proxy seen "
                   "from inside it): the token's secret and all traffic travel unencrypted.")
@click.option("--name", "spoke_name", default=None, metavar="NAME",
              help="This spoke's name, for a multi-use token (hub token create --uses): "
                   "PREFIX-NAME, or NAME if it already starts with PREFIX- (default: "
                   "PREFIX-HOSTNAME). A single-use token names its spoke itself.")
@click.argument("token", required=False)
def join(data_dir: Path, token: str | None, token_file: Any, insecure_http: bool,
         spoke_name: str | None, **opts: Any) -> None:
    """Enroll with the hub named in TOKEN, then serve in the foreground.

    TOKEN is what `hub token create` printed; give it here, or with --token-file (a file, or -
    for standard input: `spoke join --token-file - < token.txt`), so it never shows in `ps`."""
    from cli.runlock import SPOKE_LOCK
    from protocol.tokens import JoinToken, TokenError
    from spoke.identity import (
        HUB_CERT_FILE,
        KEY_FILE,
        STATE_FILE,
        DirSnapshot,
        Identity,
        SpokeState,
    )
    from spoke.service import OPTIONS_FILE

    if token is not None and token_file is not None:
        fail("give the join token as TOKEN or with --token-file, not both", 2)
    if token_file is not None:
        token = token_file.read(64 * 1024).strip()
    if not token:
        fail("no join token: give TOKEN, or --token-file FILE (- for standard input)", 2)
        return
    try:
        parsed = JoinToken.decode(token)
    except TokenError as err:
        fail(str(err), 2)
        return
    if parsed.url.startswith("http://") and not insecure_http:
        fail(f"the join token's hub URL is plain {parsed.url}: its secret and everything after "
             "it would travel unencrypted; if this network is trusted (a TLS proxy's inside), "
             "add --insecure-http", 2)
    if not parsed.name:
        fail("join token carries no spoke name", 2)
    import socket

    try:
        name = parsed.spoke_name(spoke_name, socket.gethostname())
    except TokenError as err:
        fail(str(err), 2)
        return
    _refuse_if_running(data_dir)
    identity = Identity(data_dir)
    existing = identity.load_state()
    if existing is not None and existing.enrolled:
        fail(
            f"{data_dir} already holds enrolled spoke {existing.name!r} of {existing.hub_url}; "
            "use 'spoke run' (or another --data-dir)",
            2,
        )
    # A join the hub refuses (token used, revoked, expired; wrong pin) or that is stopped
    # before it enrolled leaves the data dir exactly as it found it.
    undo = DirSnapshot(data_dir, [STATE_FILE, KEY_FILE, OPTIONS_FILE, HUB_CERT_FILE, SPOKE_LOCK])
    state = SpokeState(hub_url=parsed.url, pin=parsed.pin, name=name, enrolled=False)
    lock = _lock(data_dir, state)
    code = 1
    try:
        identity.save_state(state)
        code = _serve(data_dir, state, parsed, opts)
    finally:
        if not state.enrolled:
            undo.restore()
            lock.release(remove=undo.saved[SPOKE_LOCK] is None)
            undo.remove_dir_if_created()
        else:
            lock.release()
    sys.exit(code)


@env_vars("SPOKEHUB_SPOKE_")
@main.command()
@spoke_dir
@_policy_options
def run(data_dir: Path, **opts: Any) -> None:
    """Reconnect to the hub with the identity saved by 'spoke join'."""
    from spoke.identity import Identity

    _refuse_if_running(data_dir)
    state = Identity(data_dir).load_state()
    if state is None or not state.enrolled:
        fail(f"no enrolled spoke in {data_dir}: run 'spoke join TOKEN' first", 2)
        return
    lock = _lock(data_dir, state)
    try:
        code = _serve(data_dir, state, None, opts)
    finally:
        lock.release()
    sys.exit(code)


def _refuse_if_running(data_dir: Path) -> None:
    """One spoke process per data dir: a second one with the same identity would replace the
    first one's connection at the hub, and the two would knock each other off in turn."""
    from cli.runlock import SPOKE_LOCK, holder

    running = holder(data_dir, SPOKE_LOCK)
    if running is not None:
        fail(_running_message(data_dir, running), 2)


def _running_message(data_dir: Path, running: Any) -> str:
    name = f" {running.name!r}" if running.name else ""
    return (f"spoke{name} is already running on {data_dir} (pid {running.pid}); "
            "stop it first (`hub down` if `hub up` started it)")


def _lock(data_dir: Path, state: Any) -> Any:
    from cli.runlock import SPOKE_LOCK, Busy, RunLock

    lock = RunLock(data_dir, SPOKE_LOCK)
    try:
        lock.acquire(name=state.name, url=state.hub_url, kind="spoke")
    except Busy as err:  # lost a race with another spoke starting on this data dir
        fail(_running_message(data_dir, err.holder), 2)
    return lock


def _serve(data_dir: Path, state: Any, token: Any, opts: dict[str, Any]) -> int:
    import asyncio

    from cli.common import setup_logging
    from spoke.service import SpokeOptions, serve

    setup_logging(str(opts.pop("log_level")), str(opts.pop("log_format")),
                  service="spokehub-spoke")
    try:
        options = SpokeOptions.from_cli(data_dir, opts)
    except ValueError as err:
        fail(str(err), 2)
        return 2
    return int(asyncio.run(serve(state, token, options)))


main.add_command(sim)  # spoke sim: cli/sim_command.py
main.file_defaults = ("spoke", ("join", "run"))  # type: ignore[attr-defined]  # hub.toml [spoke]: cli/config_file.py
main.add_command(spoke_doctor)  # spoke doctor: cli/doctor_command.py

if __name__ == "__main__":
    main()
