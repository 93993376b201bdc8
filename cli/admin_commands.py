"""``hub admin``: the accounts people sign in to the hub's web pages with.

Thin like every admin command: each goes through the REST API (``/api/users…``) with the
local admin API key from ``admin.json`` (:func:`cli.common.hub_client`), so it works the same
against a remote hub (``SPOKEHUB_URL``, ``SPOKEHUB_API_KEY``). Passwords are never taken as
command-line arguments (they would land in shell history and ``ps``): they come from stdin
when it is piped, or from a prompt without echo. Pinned by tests/test_web_auth.py
(``set-password`` from a pipe) and tests/test_roles.py (``user add|list|remove``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from cli.common import aliased_group, data_dir_option, emit, fail, json_option, table
from cli.common import guarded as _call
from cli.common import hub_client as _client

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")
ROLE_CHOICE = click.Choice(["admin", "operator", "viewer"])


def _read_password(prompt: str) -> str:
    """The password from stdin when piped (one line; its newline dropped), else asked twice
    at the terminal without echo."""
    if not sys.stdin.isatty():
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        if not password:
            fail("no password on stdin", 2)
        return password
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))


@click.group(cls=aliased_group())
def admin() -> None:
    """Accounts for the hub's web pages: passwords and users with roles.

    \b
    Roles: admin (everything), operator (boxes, workstreams, approvals; no
    tokens, keys or users), viewer (read only).
    """


@admin.command("set-password")
@hub_dir
@json_option
@click.option("--user", "name", default="admin", show_default=True,
              help="Whose password to set.")
def set_password(data_dir: Path, as_json: bool, name: str) -> None:
    """Set a user's password (read from stdin when piped, else prompted twice); their other
    sessions end.

    \b
    Example:  hub admin set-password
              printf '%s\\n' "$NEW_PASSWORD" | hub admin set-password --user alice
    """
    password = _read_password(f"New password for {name}")
    data = _call(lambda: _client(data_dir).request(
        "PUT", f"/api/users/{quote(name, safe='')}/password", {"password": password}))
    emit(data, as_json, lambda d: click.echo(f"password of {name} set"))


@admin.group("user", cls=aliased_group())
def user() -> None:
    """Users who sign in to the web pages."""


@user.command("add")
@hub_dir
@json_option
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, required=True, help="What the user may do.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from stdin instead of generating one.")
def user_add(data_dir: Path, as_json: bool, name: str, role: str, password_stdin: bool) -> None:
    """Add user NAME; without --password-stdin the hub makes a password and it is shown once.

    \b
    Example:  hub admin user add alice --role operator
    """
    body: dict[str, Any] = {"name": name, "role": role}
    if password_stdin:
        if sys.stdin.isatty():
            fail("--password-stdin: pipe the password in", 2)
        body["password"] = _read_password("")
    data = _call(lambda: _client(data_dir).request("POST", "/api/users", body))

    def human(d: dict[str, Any]) -> None:
        click.echo(f"user {d['name']} added ({d['role']})", err=True)
        if "password" in d:
            click.echo(f"password (shown once): {d['password']}; change it with "
                       f"`hub admin set-password --user {d['name']}`", err=True)
            click.echo(d["password"])

    emit(data, as_json, human)


@user.command("list")
@hub_dir
@json_option
def user_list(data_dir: Path, as_json: bool) -> None:
    """Users, their roles and when their passwords were set (never the passwords)."""
    data = _call(lambda: _client(data_dir).request("GET", "/api/users"))
    emit(data, as_json, lambda d: table(d, ["name", "role", "created_at", "password_set_at"]))


@user.command("remove")
@hub_dir
@json_option
@click.argument("name")
def user_remove(data_dir: Path, as_json: bool, name: str) -> None:
    """Remove user NAME; their sessions end at once."""
    data = _call(lambda: _client(data_dir).request("DELETE", f"/api/users/{quote(name, safe='')}"))
    emit(data, as_json, lambda d: click.echo(f"user {name} removed"))
