"""``hub``: serve the hub, and the admin commands (thin: they go through ``client``).

This module is the console script's entry point and deliberately imports nothing but the
standard library: ``hub box exec ID -- CMD`` is meant to cost about as much as
``docker exec``, and loading click plus every command module would add tens of milliseconds
to each run. So :func:`main` recognises the plain forms of ``box exec`` itself and runs them
through :func:`cli.common.stream_exec`, the same code the click command uses (and those of
``box cp`` through :func:`cli.box_cp.copy`, likewise); anything else
(other commands, ``--help``, argument forms it does not fully understand, values click would
reject) goes to the click tree in :mod:`cli.hub_commands`, which then behaves exactly as
before, error messages included.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path

_VALUE_OPTIONS = ("--data-dir", "--timeout", "--env", "--workdir")


class _ExecArgs:
    """``hub box exec`` arguments as the click command would have received them.

    A plain class, not a dataclass: importing :mod:`dataclasses` alone costs ~5 ms."""

    def __init__(self, box_id: str, cmd: list[str], env: list[str]) -> None:
        self.box_id, self.cmd, self.env = box_id, cmd, env
        self.data_dir: str | None = None
        self.timeout: float | None = None
        self.workdir: str | None = None


def _parse_box_exec(args: list[str]) -> _ExecArgs | None:
    """Parse ``box exec [OPTIONS] BOX_ID [--] CMD...``, or return None to let click do it.

    Only forms whose meaning is beyond doubt are accepted: known options (with their value as
    the next word or after ``=``) before BOX_ID, then either ``--`` and any words, or words
    none of which starts with ``-`` (click would read options among them). Anything else
    (``--help``, unknown options, a missing command, a bad ``--timeout``) is click's job."""
    if args[:2] != ["box", "exec"]:
        return None
    rest = args[2:]
    opts: dict[str, list[str]] = {name: [] for name in _VALUE_OPTIONS}
    i = 0
    while i < len(rest):
        word = rest[i]
        if not word.startswith("-"):
            break
        name, eq, value = word.partition("=")
        if name not in opts:
            return None  # "--" before BOX_ID, -h/--help, unknown options: click decides
        if not eq:
            if i + 1 >= len(rest):
                return None
            value = rest[i + 1]
            i += 1
        if not value or value.startswith("-"):
            return None
        opts[name].append(value)
        i += 1
    if i >= len(rest):
        return None
    box_id, cmd = rest[i], rest[i + 1 :]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    elif any(word.startswith("-") for word in cmd):
        return None
    if not cmd:
        return None
    parsed = _ExecArgs(box_id, cmd, opts["--env"])
    if opts["--timeout"]:
        try:
            parsed.timeout = float(opts["--timeout"][-1])
        except ValueError:
            return None
        if not parsed.timeout >= 0.001:  # click's FloatRange(min=0.001); also refuses NaN
            return None
    if opts["--workdir"]:
        parsed.workdir = opts["--workdir"][-1]
    if opts["--data-dir"]:
        parsed.data_dir = opts["--data-dir"][-1]
    return parsed


def _data_dir(given: str | None) -> Path | None:
    """The hub data dir as click would resolve it (option, then non-empty env, then the
    default), or None when click would reject it (not a readable directory)."""
    from cli.common import default_dir

    path = Path(given or os.environ.get("SPOKEHUB_HUB_DIR") or default_dir("hub"))
    if path.exists() and not (path.is_dir() and os.access(path, os.R_OK)):
        return None
    return path


def _fast_box_exec(args: list[str]) -> int | None:
    """Run ``hub box exec`` without click; None when the arguments need click."""
    parsed = _parse_box_exec(args)
    if parsed is None:
        return None
    data_dir = _data_dir(parsed.data_dir)
    if data_dir is None:
        return None
    from cli.common import stream_exec

    env = dict(item.partition("=")[::2] for item in parsed.env)
    try:
        return stream_exec(data_dir, parsed.box_id, parsed.cmd, parsed.timeout, env,
                           parsed.workdir)
    except KeyboardInterrupt:  # what click's standalone mode prints and returns
        sys.stderr.write("\nAborted!\n")
        return 1
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # Our reader went away (``hub box exec … | head``): quietly, like click.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


class _CpArgs:
    """``hub box cp`` arguments as the click command would have received them."""

    def __init__(self, src: str, dst: str, data_dir: str | None, parents: bool,
                 as_json: bool) -> None:
        self.src, self.dst, self.data_dir = src, dst, data_dir
        self.parents, self.as_json = parents, as_json


def _parse_box_cp(args: list[str]) -> _CpArgs | None:
    """Parse ``box cp [-p|--parents] [--json] [--data-dir DIR] SRC DST`` (options anywhere,
    as click allows), or return None to let click do it: ``--help``, ``--``, unknown or
    combined options, a word after them that starts with ``-``, not exactly two paths."""
    if args[:2] != ["box", "cp"]:
        return None
    data_dir: str | None = None
    parents = as_json = False
    paths: list[str] = []
    i = 2
    while i < len(args):
        word = args[i]
        if word in ("-p", "--parents"):
            parents = True
        elif word == "--json":
            as_json = True
        elif word.partition("=")[0] == "--data-dir":
            _, eq, value = word.partition("=")
            if not eq:
                if i + 1 >= len(args):
                    return None
                i += 1
                value = args[i]
            if not value or value.startswith("-"):
                return None
            data_dir = value
        elif word.startswith("-"):
            return None
        else:
            paths.append(word)
        i += 1
    if len(paths) != 2:
        return None
    return _CpArgs(paths[0], paths[1], data_dir, parents, as_json)


def _fast_box_cp(args: list[str]) -> int | None:
    """Run ``hub box cp`` without click (cli/box_cp.py); None when the arguments need click."""
    parsed = _parse_box_cp(args)
    if parsed is None:
        return None
    data_dir = _data_dir(parsed.data_dir)
    if data_dir is None:
        return None
    from cli.box_cp import copy

    try:
        copy(data_dir, parsed.src, parsed.dst, parents=parsed.parents, as_json=parsed.as_json)
    except SystemExit as done:  # cli.common.fail: its message is out, this is its code
        return done.code if isinstance(done.code, int) else 1
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")
        return 1
    return 0


def _exit_now(code: int) -> None:
    """Flush our output and end the process without interpreter finalisation.

    Tearing down the interpreter (modules, GC, the ssl and socket machinery) costs ~6 ms
    that nobody waits for usefully; the fast path holds nothing else needing cleanup (its
    connection is closed, no atexit handlers, no threads), so flushing is all that matters."""
    try:
        sys.stdout.flush()
    except OSError as exc:  # stdout's reader went away: what click reports, quietly
        if exc.errno != errno.EPIPE:
            raise
        code = 1
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``hub`` console script.

    Given ``argv`` (a caller in this process), it ends with :class:`SystemExit` as click
    commands do; as the script itself, the fast path ends the process directly."""
    args = sys.argv[1:] if argv is None else list(argv)
    code = _fast_box_exec(args)
    if code is None:
        code = _fast_box_cp(args)
    if code is not None:
        if argv is None:
            _exit_now(code)
        sys.exit(code)
    from cli.hub_commands import hub

    if argv is None:
        hub()
    else:
        hub.main(args=args)


if __name__ == "__main__":
    main()
