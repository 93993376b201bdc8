"""The admin CLI contract for API keys and join tokens: --json output, hashed storage,
revocation, and clear usage errors (exit 2) for bad arguments."""

from __future__ import annotations

import sqlite3

import pytest

from client.http_client import ApiError, HubClient
from tests.cluster import Hub, wait_until


def test_api_keys_create_list_use_and_revoke(hub: Hub) -> None:
    created = hub.cli_json("apikey", "create", "--name", "ci-bot")
    assert created["key"].startswith("shk_") and created["id"]
    plain = hub.cli("apikey", "create", "--name", "other", check=True)
    assert plain.stdout.strip().splitlines()[-1].startswith("shk_"), "the key is the last line"
    admin = hub.client()
    bot = HubClient(hub.url, created["key"], admin.pin)
    assert bot.request("GET", "/api/spokes") == []
    listed = {k["id"]: k for k in hub.cli_json("apikey", "list")}
    assert listed[created["id"]]["name"] == "ci-bot" and listed[created["id"]]["last_used"] is not None
    assert "key" not in listed[created["id"]] and "key_hash" not in listed[created["id"]]
    with sqlite3.connect(hub.dir / "hub.db") as db:
        stored = [row[0] for row in db.execute("SELECT key_hash FROM api_keys")]
    assert created["key"] not in stored and all(len(h) == 64 for h in stored), "only hashes are kept"

    hub.cli("apikey", "revoke", created["id"], check=True)

    def refused() -> bool:
        try:
            bot.close()
            bot.request("GET", "/api/spokes")
            return False
        except ApiError as err:
            return err.status == 401

    wait_until(refused, what="the revoked key to be refused")
    again = hub.cli("apikey", "revoke", "key_doesnotexist")
    assert again.returncode == 2 and "key_doesnotexist" in again.stderr


def test_token_list_and_revoke(hub: Hub) -> None:
    token = hub.cli_json("token", "create", "--name", "laptop", "--ttl", "30m")
    assert {"token", "id", "name", "expires_at"} <= set(token) and token["name"] == "laptop"
    hub.cli("token", "revoke", token["id"], check=True)
    [row] = [t for t in hub.cli_json("token", "list") if t["id"] == token["id"]]
    assert row["state"] == "revoked"


@pytest.mark.parametrize("args, needle", [
    (["token", "create"], "--name"),
    (["token", "create", "--name", "x", "--ttl", "0"], "ttl"),
    (["apikey", "create"], "--name"),
    (["box", "exec", "bx_0000000000000000"], "missing argument"),
    (["ws", "new", "--spoke", "a", "--label", "b", "hi"], "not both"),
    (["serve", "--port", "99999"], "port"),
    (["nonsense"], "No such command"),
])
def test_bad_arguments_are_usage_errors(hub: Hub, args: list[str], needle: str) -> None:
    res = hub.cli(*args)
    assert res.returncode == 2, (args, res.returncode, res.stderr)
    assert needle.lower() in res.stderr.lower(), (args, res.stderr)
    assert res.stdout == "", "errors go to stderr only"
