"""Options and output shared by the ``hub`` and ``spoke`` commands (kept import-light).

Nothing here imports click (or anything else beyond the standard library) at module level:
``hub box exec``'s fast path in :mod:`cli.hub_cli` uses :func:`default_dir` and
:func:`stream_exec` without ever loading click, which would cost tens of milliseconds on a
command meant to be about as quick as ``docker exec``. The click helpers import it on use.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from client.http_client import default_dir

F = TypeVar("F", bound=Callable[..., Any])


def data_dir_option(kind: str, env: str) -> Callable[[F], F]:
    import click

    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=env,
        default=lambda: default_dir(kind),
        show_default=f"~/.local/share/spokehub/{kind}",
        help=f"State directory (env {env}).",
    )


def env_vars(prefix: str, skip: tuple[str, ...] = (), **named: str) -> Callable[[F], F]:
    """Give every option of a command an environment variable, ``PREFIX`` + its name in
    capitals (``--public-url`` of ``hub serve``: ``SPOKEHUB_HUB_PUBLIC_URL``), shown in
    ``--help``; ``named`` overrides a parameter's (arguments included), ``skip`` leaves
    some without (those with another documented variable). Precedence is click's: a flag
    beats the environment, which beats the default. Apply above the command decorator.
    Pinned by tests/test_config_reference.py."""
    import click

    def apply(command: F) -> F:
        assert isinstance(command, click.Command)
        for param in command.params:
            name = param.name or ""
            if name in named:
                param.envvar = named[name]
            elif isinstance(param, click.Option) and param.envvar is None and name not in skip:
                param.envvar = prefix + name.upper()
            if isinstance(param, click.Option):
                param.show_envvar = True
        return command

    return apply


def version_option(prog: str) -> Callable[[F], F]:
    """``--version`` (``hub 0.1.0``), from the one version string (protocol/version.py)."""
    import click

    from protocol.version import VERSION

    return click.version_option(VERSION, "--version", prog_name=prog,
                                message="%(prog)s %(version)s")


def apply_file_defaults(ctx: Any, kind: str, commands: dict[str, Any], args: list[str]) -> None:
    """Give the subcommand about to run its defaults from ``hub.toml`` (cli/config_file.py:
    flags > environment > file > defaults), as click's ``default_map``. Only commands that
    take them: an admin command never fails over a bad ``[serve]`` table."""
    from cli.config_file import ConfigFileError, default_map

    try:
        ctx.default_map = default_map(kind, args, commands)
    except ConfigFileError as err:
        fail(str(err), 2)


# HTTP client libraries that log every request at INFO (the model SDKs' clients, each model
# call through the hub's relay): noise in a ``hub up`` terminal, so shown only at DEBUG.
# Per-request lines of the HTTP clients and the MCP SDK's session chatter: DEBUG only.
CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "mcp")


LOG_FORMATS = ("text", "json")


def setup_logging(level: str, log_format: str = "text", service: str | None = None) -> None:
    """Logging for ``hub serve`` and ``spoke run|join``: ``level`` for our own lines, and
    the HTTP clients' per-request lines only when ``level`` is DEBUG. ``log_format`` ``json``
    writes one JSON object a line, with the trace and span ids while a span is current
    (cli/telemetry.py); ``text`` is for people. With ``service`` (``spokehub-hub``,
    ``spokehub-spoke``) tracing is set up too, if the OTEL_* environment asks for it.
    Pinned by tests/test_tracing.py."""
    import logging

    if log_format == "json":
        from cli.telemetry import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler])
    else:
        logging.basicConfig(level=level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    if service is not None:
        from cli.telemetry import setup_tracing

        setup_tracing(service)  # the SDK loads only if the environment asks for traces


# Either word works for either command: `hub box list` and `hub spoke ls` are what people type.
COMMAND_ALIASES = {"ls": "list", "list": "ls", "rm": "remove", "remove": "rm"}


def aliased_group() -> Any:
    """The click Group class for every command group: it accepts ``ls``/``list`` and
    ``rm``/``remove`` for one another (built on use, so click loads only when needed)."""
    import click

    class AliasedGroup(click.Group):
        # Set on a top-level group: (kind, names of the commands that take hub.toml defaults).
        file_defaults: tuple[str, tuple[str, ...]] | None = None

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            found = super().get_command(ctx, cmd_name)
            if found is None and cmd_name in COMMAND_ALIASES:
                found = super().get_command(ctx, COMMAND_ALIASES[cmd_name])
            return found

        def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
            """Also where the file's defaults go in: the one place that sees the
            subcommand's arguments (``--data-dir``, ``--config``) before they are parsed."""
            name, command, rest = super().resolve_command(ctx, args)
            if self.file_defaults is not None and command is not None:
                kind, takers = self.file_defaults
                if command.name in takers and not ctx.resilient_parsing:
                    apply_file_defaults(ctx, kind, {n: self.commands[n] for n in takers},
                                        list(rest))
            return name, command, rest

    return AliasedGroup


def json_option(fn: F) -> F:
    """The ``--json`` flag, as a decorator (a function so click loads only when used)."""
    import click

    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
    )(fn)


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    import click

    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        human(data)


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    import click

    if not rows:
        click.echo("(none)", err=True)
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value > 1e9:
        import datetime as dt

        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        return ",".join(map(_printable, value)) or "-"
    return _printable(value)


def _printable(value: Any) -> str:
    """``value`` as text a terminal shows as it is: control characters (a terminal escape
    in a name a remote peer chose) are written as escapes, never sent raw."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def hub_client(data_dir: Path) -> Any:
    """The admin client for the hub whose data dir this is (see ``admin.json``)."""
    from client.http_client import HubClient

    return HubClient.from_data_dir(data_dir)


def guarded(fn: Callable[[], Any]) -> Any:
    """Run a hub call; a typed error becomes a one-line message and the CLI's exit code
    (2 for the caller's mistakes: invalid, not_found, denied; 1 otherwise)."""
    from protocol.errors import RemoteError

    try:
        return fn()
    except RemoteError as err:
        fail(f"{err.message} ({err.code.value})",
             2 if err.code.value in ("invalid", "not_found", "denied") else 1)


def fail(message: str, code: int = 1) -> None:
    import click

    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _say(message: str) -> None:
    """One line on stderr, flushed (what ``click.echo(..., err=True)`` does for it)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def stream_exec(
    data_dir: Path,
    box_id: str,
    cmd: list[str],
    timeout: float | None,
    env: dict[str, str],
    workdir: str | None,
) -> int:
    """Run ``cmd`` in a box through the hub, copying its output to ours as it arrives.

    Returns the exit status ``hub box exec`` ends with: the command's own, 124 when it timed
    out with status 0, 1 on an error from the hub and 2 when the request itself was refused
    (invalid, not found, denied). Shared by the click command and the click-free fast path
    in :mod:`cli.hub_cli`, so both behave the same; standard library only for that reason.
    """
    from client.http_client import HubClient
    from protocol.errors import RemoteError

    out, err = sys.stdout.buffer, sys.stderr.buffer
    code = 1
    try:
        client = HubClient.from_data_dir(data_dir)
        for event in client.exec_once(box_id, cmd, timeout, env, workdir):
            kind = event.get("t")
            if kind in ("stdout", "stderr"):
                target = out if kind == "stdout" else err
                data = event.get("data")  # raw from the binary exec stream, else NDJSON base64
                target.write(data if isinstance(data, bytes) else base64.b64decode(event["d"]))
                target.flush()
            elif kind == "exit":
                code = int(event["exit_code"])
                if event.get("timed_out"):
                    _say(f"error: command timed out after {timeout}s and was killed")
                    code = 124 if code == 0 else code
            elif kind == "error":
                _say(f"error: {event.get('message')} ({event.get('code')})")
                code = 1
    except RemoteError as exc:
        _say(f"error: {exc.message} ({exc.code.value})")
        return 2 if exc.code.value in ("invalid", "not_found", "denied") else 1
    sys.stdout.flush()
    return code
