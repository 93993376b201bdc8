"""Every command and option of ``hub`` and ``spoke`` says what it does, and ``ls``/``list``
(``rm``/``remove``) work for one another everywhere (issue 15, item 10)."""

from __future__ import annotations

import subprocess

import click
import pytest

from cli.hub_commands import hub
from cli.spoke_cli import main as spoke
from tests.cluster import HUB, Hub


def _commands(group: click.Group, path: list[str]) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, cmd in group.commands.items():
        found.append((" ".join([*path, name]), cmd))
        if isinstance(cmd, click.Group):
            found += _commands(cmd, [*path, name])
    return found


ALL = _commands(hub, ["hub"]) + _commands(spoke, ["spoke"])


@pytest.mark.parametrize("path,cmd", ALL, ids=[p for p, _ in ALL])
def test_every_command_and_option_has_help(path: str, cmd: click.Command) -> None:
    assert (cmd.help or "").strip(), f"`{path}` has no help text"
    bare = [p.name for p in cmd.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not bare, f"`{path}`: options without help: {bare}"


def test_ls_and_list_are_the_same_everywhere(hub: Hub) -> None:
    for group in ("box", "ws", "spoke", "token", "apikey"):
        for word in ("ls", "list"):
            res = hub.cli(group, word, "--json")
            assert res.returncode == 0, f"hub {group} {word}: {res.stderr}"


def test_help_works_for_aliases_too() -> None:
    res = subprocess.run([HUB, "box", "list", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--all" in res.stdout
