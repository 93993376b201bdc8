"""Render ``docs/configuration.md``: every option of ``hub serve``, ``spoke join`` and
``spoke run``, with its default and environment variable, from the click commands
themselves, so the reference cannot drift from the code.

    python -m cli.config_reference > docs/configuration.md

tests/test_config_reference.py fails when the file is not what this renders.
"""

from __future__ import annotations

import click

HEADER = """# Configuration reference

Every option of the long-running commands, with its default, its environment variable and
its key in `hub.toml`. One precedence for all of them:

    flag on the command line  >  environment variable  >  hub.toml  >  built-in default

`hub config show` prints the value each option would have here and where it came from.
Generated from the commands themselves by `python -m cli.config_reference >
docs/configuration.md` (a test checks it is current); `--help` on each command says the same.

## `hub.toml`

The hub's own file (models and alerts live there too): `[serve]` holds defaults for
`hub serve`, `[spoke]` for `spoke join` and `spoke run`, keyed as in the tables below. A key
that is not an option is refused (exit 2), so a typo never goes unnoticed; the join token is
never read from the file. The store has a table of its own: `[database] url` is `hub serve
--database` (PostgreSQL; [operator-guide.md, section 4](operator-guide.md)).

```toml
[serve]
public_url = "https://hub.example.org:8443"
host = "0.0.0.0"
resume_grace = "30s"

[spoke]
max_boxes = 40
label = ["gpu", "big-disk"]
```

Which file: `SPOKEHUB_CONFIG` when set; else for `hub` commands `--config` /
`SPOKEHUB_HUB_CONFIG` or `hub.toml` in the hub's data dir; for `spoke` commands `hub.toml` in
the hub's data dir (`SPOKEHUB_HUB_DIR`, or the default) — shared on a machine that runs both,
as `hub up` does; a spoke-only machine sets `SPOKEHUB_CONFIG`. `spoke run` also reuses the
options given at `spoke join` (its `options.json`) for any not given again.

Shell completion (click's): `eval "$(_HUB_COMPLETE=bash_source hub)"` and
`eval "$(_SPOKE_COMPLETE=bash_source spoke)"` in `~/.bashrc` (`zsh_source` / `fish_source`
for zsh and fish). `hub --version`, `spoke --version` print the release.

Files the hub and spoke read besides their options:

- the hub's `hub.toml` in its data dir (or `--config`): models ([agents.md](agents.md)) and
  alerts ([operator-guide.md, section 11](operator-guide.md#alerts)); models also come from
  `SPOKEHUB_MODEL_*` variables (`SPOKEHUB_MODEL_DEFAULT`, `SPOKEHUB_MODEL_FALLBACK`,
  `SPOKEHUB_MODEL_<ALIAS>_<FIELD>`), between the flags and the file;
- the spoke's `options.json` in its data dir: the options given at `spoke join`, reused by
  `spoke run` for any option not given again;
- the spoke's `--models-file` (its own models, like `hub.toml`'s `[models.*]`).

The admin commands (`hub token …`, `hub spoke …`, `hub box …`) find the hub through
`SPOKEHUB_HUB_DIR` (its `admin.json`), or `SPOKEHUB_URL`, `SPOKEHUB_API_KEY` and
`SPOKEHUB_PIN`.
"""


def _default(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "off"
    if isinstance(param, click.Option) and isinstance(param.show_default, str):
        return param.show_default
    default = param.default
    # click 8.2+ marks "no default" with a sentinel object; older ones with None.
    if callable(default) or default is None or default == () or "UNSET" in repr(default):
        return "—"
    return str(default)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


SECRET = ("token", "token_file")  # never from the file (cli/config_file.py)
FILE_KEYS = {"database": "`[database] url`"}  # in a table of their own (config_file.TABLE_KEYS)


def section(title: str, command: click.Command, table_name: str) -> str:
    rows = ["| option | default | environment | `hub.toml` | what it does |",
            "|---|---|---|---|---|"]
    for param in command.params:
        if isinstance(param, click.Option):
            flag = ", ".join(f"`{o}`" for o in param.opts)
            if param.metavar and not param.is_flag:
                flag += f" `{param.metavar}`"
            what = param.help or ""
        elif isinstance(param, click.Argument):
            flag, what = f"`{(param.name or '').upper()}` (argument)", ""
        else:
            continue
        env = param.envvar if isinstance(param.envvar, str) else "—"
        env = f"`{env}`" if env != "—" else env
        key = "—" if param.name in SECRET else f"`[{table_name}] {param.name}`"
        key = FILE_KEYS.get(param.name or "", key)
        rows.append(f"| {flag} | {_cell(_default(param))} | {env} | {key} | {_cell(what)} |")
    doc = (command.help or "").split("\n\n")[0]
    return f"## `{title}`\n\n{_cell(doc)}\n\n" + "\n".join(rows) + "\n"


def render() -> str:
    from cli.hub_commands import serve
    from cli.spoke_cli import join, run

    parts = [HEADER]
    for title, command, table_name in (("hub serve", serve, "serve"), ("spoke join", join, "spoke"),
                                       ("spoke run", run, "spoke")):
        parts.append(section(title, command, table_name))
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
