"""``hub config show``: the effective value of every ``hub serve``, ``spoke join`` and
``spoke run`` option on this machine, and where each came from (cli/config_file.py has the
precedence). A flag given on the command line beats everything shown here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from cli.common import aliased_group, data_dir_option, emit, fail, json_option, table

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")


def effective(command: click.Command, file_values: dict[str, Any], file_label: str,
              command_label: str) -> list[dict[str, Any]]:
    """One row per option: its value and source (environment, file or default)."""
    rows: list[dict[str, Any]] = []
    for param in command.params:
        if not isinstance(param, click.Option) or not param.name or param.name == "help":
            continue
        env = param.envvar if isinstance(param.envvar, str) else None
        if env and env in os.environ:
            value: Any = "(hidden)" if param.name == "token" else os.environ[env]
            source = f"env {env}"
        elif param.name in file_values:
            value, source = file_values[param.name], file_label
        else:
            default = param.default
            if callable(default):
                default = default()
            value = "" if default is None or "UNSET" in repr(default) else default
            source = "default"
        if param.name == "database" and isinstance(value, str) and value:
            from hub.store.pg_url import redact  # a database URL's password is never shown

            value = redact(value)
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, (tuple, list)):
            value = " ".join(map(str, value))
        rows.append({"command": command_label, "option": param.opts[0], "value": value,
                     "source": source})
    return rows


@click.group("config", cls=aliased_group())
def config() -> None:
    """The configuration the hub and spoke commands would run with here."""


@config.command("show")
@hub_dir
@json_option
def show(data_dir: Path, as_json: bool) -> None:
    """Every option of `hub serve`, `spoke join` and `spoke run`: its effective value and
    where it came from (env VAR, hub.toml [section], or default). Flags on the command line
    beat all of these (flags > environment > hub.toml > defaults)."""
    from cli.config_file import ConfigFileError, config_path, default_map
    from cli.hub_commands import serve
    from cli.spoke_cli import join, run

    rows: list[dict[str, Any]] = []
    try:
        hub_file = config_path("hub", ["--data-dir", str(data_dir)])
        hub_defaults = default_map("hub", ["--data-dir", str(data_dir)], {"serve": serve})
        spoke_file = config_path("spoke", [])
        spoke_defaults = default_map("spoke", [], {"join": join, "run": run})
    except ConfigFileError as err:
        fail(str(err), 2)
        return
    rows += effective(serve, hub_defaults.get("serve", {}), f"{hub_file} [serve]", "hub serve")
    for name, command in (("join", join), ("run", run)):
        rows += effective(command, spoke_defaults.get(name, {}), f"{spoke_file} [spoke]",
                          f"spoke {name}")
    doc = {"precedence": ["flag", "environment", "file", "default"],
           "files": {"hub": str(hub_file), "spoke": str(spoke_file)}, "options": rows}
    emit(doc if as_json else rows, as_json, lambda r: table(
        r, ["command", "option", "value", "source"]))
