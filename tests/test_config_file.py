"""Defaults from hub.toml for `hub serve` and `spoke join|run`, one precedence (flags >
environment > file > defaults), `hub config show`, `--version` and shell completion, on the
real console scripts (cli/config_file.py, cli/config_command.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from protocol.version import VERSION
from tests.cluster import HUB, SPOKE


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPOKEHUB_")}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60,
                          env={**clean, **env})


def test_hub_serve_takes_its_defaults_from_hub_toml_below_env_and_flags(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    (data / "hub.toml").write_text('[serve]\nhistory_interval = "from-file"\n')
    serve = [HUB, "serve", "--data-dir", str(data), "--port", "0"]
    res = _run(*serve)
    assert res.returncode == 2 and "bad duration 'from-file'" in res.stderr
    res = _run(*serve, SPOKEHUB_HUB_HISTORY_INTERVAL="from-env")
    assert res.returncode == 2 and "bad duration 'from-env'" in res.stderr
    res = _run(*serve, "--history-interval", "from-flag", SPOKEHUB_HUB_HISTORY_INTERVAL="from-env")
    assert res.returncode == 2 and "bad duration 'from-flag'" in res.stderr

    (data / "hub.toml").write_text('[serve]\nprot = 8443\n')
    res = _run(*serve)
    assert res.returncode == 2 and "unknown key(s) in [serve]: prot" in res.stderr
    # Admin commands do not read [serve]: a typo there never locks the operator out.
    res = _run(HUB, "token", "list", "--data-dir", str(data))
    assert "unknown key" not in res.stderr and "no hub in" in res.stderr


def test_spoke_commands_read_the_spoke_table(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[spoke]\nmax_boxes = 0\n")
    res = _run(SPOKE, "join", "--data-dir", str(tmp_path / "s"), "shj1.not-a-token",
               SPOKEHUB_CONFIG=str(config))
    assert res.returncode == 2 and "--max-boxes" in res.stderr and "0" in res.stderr
    config.write_text('[spoke]\ntoken = "shj1.secret"\n')
    res = _run(SPOKE, "run", "--data-dir", str(tmp_path / "s"), SPOKEHUB_CONFIG=str(config))
    assert res.returncode == 2 and "unknown key(s) in [spoke]: token" in res.stderr


def test_hub_config_show_says_where_each_value_came_from(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    (data / "hub.toml").write_text('[serve]\npublic_url = "https://hub.example:8443"\n'
                                   "[spoke]\nmax_boxes = 40\n")
    res = _run(HUB, "config", "show", "--json", "--data-dir", str(data),
               SPOKEHUB_HUB_PORT="9443", SPOKEHUB_CONFIG=str(data / "hub.toml"))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["precedence"] == ["flag", "environment", "file", "default"]
    rows = {(r["command"], r["option"]): r for r in doc["options"]}
    assert rows[("hub serve", "--port")] == {"command": "hub serve", "option": "--port",
                                             "value": "9443", "source": "env SPOKEHUB_HUB_PORT"}
    assert rows[("hub serve", "--public-url")]["value"] == "https://hub.example:8443"
    assert rows[("hub serve", "--public-url")]["source"].endswith("hub.toml [serve]")
    assert rows[("spoke run", "--max-boxes")]["value"] == 40
    assert rows[("hub serve", "--host")] == {"command": "hub serve", "option": "--host",
                                             "value": "127.0.0.1", "source": "default"}
    text = _run(HUB, "config", "show", "--data-dir", str(data))
    assert text.returncode == 0 and "SOURCE" in text.stdout and "hub.toml [serve]" in text.stdout


def test_database_url_from_its_own_table(tmp_path: Path) -> None:
    """``[database] url`` in hub.toml is ``hub serve --database`` (below the environment's
    SPOKEHUB_DATABASE_URL and the flag); a database that cannot be reached stops the hub with
    one line, its password hidden; a bad one is a usage error."""
    data = tmp_path / "hub"
    data.mkdir()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    (data / "hub.toml").write_text(
        f'[database]\nurl = "postgresql://hub:topsecret@127.0.0.1:{port}/spokehub"\n')
    serve = [HUB, "serve", "--data-dir", str(data), "--port", "0"]
    res = _run(*serve)
    closed.close()
    assert res.returncode == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot reach the database postgresql://hub:***@127.0.0.1" in lines[0]
    assert "topsecret" not in res.stderr and "Traceback" not in res.stderr

    res = _run(*serve, SPOKEHUB_DATABASE_URL="mysql://hub@db/x")  # the environment beats the file
    assert res.returncode == 2 and "--database: unknown database 'mysql://hub@db/x'" in res.stderr
    res = _run(*serve, "--database", "sqlite:")  # the flag beats both
    assert res.returncode == 2 and "sqlite: needs a path" in res.stderr

    shown = _run(HUB, "config", "show", "--json", "--data-dir", str(data))
    rows = {(r["command"], r["option"]): r for r in json.loads(shown.stdout)["options"]}
    assert rows[("hub serve", "--database")]["value"].startswith("postgresql://hub:***@127.0.0.1")

    (data / "hub.toml").write_text('[database]\nuri = "postgresql://h/x"\n')
    res = _run(*serve)
    assert res.returncode == 2 and "unknown key(s) in [database]: uri" in res.stderr


def test_version_and_shell_completion() -> None:
    assert _run(HUB, "--version").stdout == f"hub {VERSION}\n"
    assert _run(SPOKE, "--version").stdout == f"spoke {VERSION}\n"
    script = _run(HUB, _HUB_COMPLETE="bash_source")
    assert script.returncode == 0 and "_hub_completion" in script.stdout
    words = _run(HUB, COMP_WORDS="hub to", COMP_CWORD="1", _HUB_COMPLETE="bash_complete")
    assert "plain,token" in words.stdout.splitlines()
    words = _run(SPOKE, COMP_WORDS="spoke jo", COMP_CWORD="1", _SPOKE_COMPLETE="bash_complete")
    assert "plain,join" in words.stdout.splitlines()
    zsh = _run(SPOKE, _SPOKE_COMPLETE="zsh_source")
    assert zsh.returncode == 0 and "compdef" in zsh.stdout
