"""deploy/: the hub, spoke and sandbox images, the compose file and the systemd units, for real.

The end-to-end test builds the three images with deploy/build-images.sh (from a locally
debootstrapped base: nothing can be pulled here; cached by content-hash tags), brings the hub up
with deploy/compose.yaml, enrolls the compose spoke with a token made inside the hub container,
runs a command in a box through the hub, restarts the spoke (which must come back with
`spoke run`, its token spent), and tears everything down, boxes included.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.cluster import HUB, SPOKE, free_port, wait_until
from tests.deploy_images import (
    COMPOSE_FILE,
    DEPLOY,
    build_images,
    compose,
    inspect,
    remove_spoke_leftovers,
    run,
)

SOCKET = "/var/run/docker.sock"


def _docker_reason() -> str | None:
    try:
        docker.from_env().ping()
    except Exception as err:  # pragma: no cover - only where no engine exists
        return f"no Docker engine reachable: {err}"
    return None


def _need_compose() -> None:
    # Not a skip: `make install-test` (deploy/install-deps.sh --test) installs it.
    assert shutil.which("docker-compose"), (
        "docker-compose is not installed: run `make install-test` (apt-get install docker-compose)")


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    reason = _docker_reason()
    if reason:
        pytest.skip(f"!!! SKIPPING DEPLOY TESTS: {reason}")
    _need_compose()
    return build_images()


def _compose_env(images: dict[str, str], port: int) -> dict[str, str]:
    return {
        "DOCKER_GID": str(os.stat(SOCKET).st_gid),
        "SPOKEHUB_HUB_IMAGE": images["hub"],
        "SPOKEHUB_SPOKE_IMAGE": images["spoke"],
        "SPOKEHUB_SANDBOX_IMAGE": images["sandbox"],
        "SPOKEHUB_HUB_PORT": str(port),
        "SPOKEHUB_HUB_BIND": "127.0.0.1",
        "SPOKEHUB_JOIN_TOKEN": "",
    }


class Deployment:
    """One compose project: a hub, a spoke, and the admin CLI through `exec` in the hub."""

    def __init__(self, images: dict[str, str]) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.project = f"spokehubdeploy{suffix}"
        self.spoke_name = f"deploy-{suffix}"
        self.port = free_port()
        self.env = _compose_env(images, self.port)

    def compose(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        return compose(self.project, {**self.env, **env}, *args, check=check)

    def hub(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The admin CLI inside the hub container, as an operator would run it."""
        return self.compose("exec", "-T", "hub", "hub", *args, check=check)

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return ids[0]

    def spoke_state(self) -> str | None:
        proc = self.hub("spoke", "list", "--json", check=False)
        if proc.returncode != 0:
            return None
        for spoke in json.loads(proc.stdout):
            if spoke["name"] == self.spoke_name:
                return str(spoke["state"])
        return None

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False).stdout

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        remove_spoke_leftovers(self.spoke_name)


@pytest.fixture
def deployment(images: dict[str, str]) -> Iterator[Deployment]:
    d = Deployment(images)
    try:
        yield d
    finally:
        d.down()


def _health(container: str) -> str:
    return str(inspect(container)["State"].get("Health", {}).get("Status", ""))


def _get_healthz(port: int) -> dict[str, Any]:
    # The hub's own self-signed certificate: this only checks the published port answers.
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx,
                                timeout=10) as reply:
        return dict(json.load(reply))


@pytest.mark.timeout(1800)  # the first run builds three images (minutes); later runs reuse them
def test_compose_hub_and_spoke_run_a_box(deployment: Deployment, images: dict[str, str]) -> None:
    d = deployment
    d.compose("up", "-d", "hub")
    hub = d.container("hub")
    try:
        wait_until(lambda: _health(hub) == "healthy", timeout=180, what="hub HEALTHCHECK healthy")
    except AssertionError:
        raise AssertionError(f"hub never healthy: {inspect(hub)['State']}\n{d.logs()}") from None
    assert _get_healthz(d.port)["ok"] is True
    hub_info = inspect(hub)
    assert hub_info["Config"]["User"] == "10001:10001"
    assert [b["HostIp"] for b in hub_info["HostConfig"]["PortBindings"]["8443/tcp"]] == ["127.0.0.1"]
    assert not any(SOCKET in m.get("Source", "") for m in hub_info["Mounts"])

    token = json.loads(d.hub("token", "create", "--name", d.spoke_name, "--ttl", "10m",
                             "--json").stdout)["token"]
    d.compose("up", "-d", "--no-deps", "spoke", SPOKEHUB_JOIN_TOKEN=token)
    try:
        wait_until(lambda: d.spoke_state() == "connected", timeout=120, what="spoke connected")
    except AssertionError:
        raise AssertionError(f"the spoke did not connect\n{d.logs()}") from None

    # The socket is in the spoke container, used by its non-root user through the group.
    spoke = inspect(d.container("spoke"))
    assert f"{SOCKET}:{SOCKET}:rw" in spoke["HostConfig"]["Binds"]
    assert spoke["Config"]["User"] == "10001:10001"
    assert d.env["DOCKER_GID"] in spoke["HostConfig"]["GroupAdd"]
    processes = _processes(spoke["Id"])
    assert "bin/spoke join --token-file - " in processes, processes
    assert token not in processes and token not in " ".join(spoke["Config"]["Cmd"] or [])

    box = d.hub("box", "create", "--spoke", d.spoke_name, "--image", images["sandbox"]).stdout.strip()
    out = d.hub("box", "exec", box, "--", "sh", "-c",
                "echo hello from $(id -u) in $(pwd); git --version; python3 -c 'print(6*7)'").stdout
    assert "hello from 1000 in /workspace" in out
    assert "git version" in out and "42" in out

    # ... and never in a box: boxes are made by the spoke through the engine, on the host.
    box_ids = run(["docker", "ps", "-q", "--filter", f"label=spokehub.box={box}"]).stdout.split()
    assert len(box_ids) == 1
    box_info = inspect(box_ids[0])
    assert box_info["Config"]["Labels"]["spokehub.spoke"] == d.spoke_name
    assert not any(SOCKET in (m.get("Source", "") + m.get("Destination", ""))
                   for m in box_info["Mounts"])

    # A restart finds an enrolled data dir: the entrypoint runs `spoke run` (the token is spent).
    d.compose("restart", "spoke")
    wait_until(lambda: "bin/spoke run " in _processes(d.container("spoke")), timeout=60,
               what="`spoke run` in the restarted spoke container")
    again = wait_until(lambda: _exec_when_back(d, box), timeout=120, what="box exec after restart")
    assert "hello again" in again
    logs = d.compose("logs", "--no-color", "spoke").stdout
    assert "already holds enrolled spoke" not in logs and "no join token" not in logs
    assert d.spoke_state() == "connected"

    d.hub("box", "rm", box)
    wait_until(lambda: not run(["docker", "ps", "-aq", "--filter",
                                f"label=spokehub.box={box}"]).stdout.strip(),
               timeout=60, what="box container removed")


def _processes(container: str) -> str:
    """The container's command lines, as the host's ps sees them ("" while it is not running)."""
    return run(["docker", "top", container], check=False).stdout + "\n"


def _exec_when_back(d: Deployment, box: str) -> str | None:
    proc = d.hub("box", "exec", box, "--", "echo", "hello again", check=False)
    return proc.stdout if proc.returncode == 0 else None


# ------------------------------------------------------------------------- compose file
def _config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # An empty .env-free environment: only what the test gives.
    base = {"DOCKER_GID": "999"}
    return run(["docker-compose", "-f", str(COMPOSE_FILE), *args, "config"],
               env={**base, **(env or {})}, check=False)


def test_compose_file_validates() -> None:
    _need_compose()
    plain = _config()
    assert plain.returncode == 0, plain.stderr
    assert "127.0.0.1:8443:8443" in plain.stdout  # loopback unless SPOKEHUB_HUB_BIND says else
    assert "public-url https://hub:8443" in plain.stdout
    # The Docker socket is mounted once (one "source:target" line), into the spoke service.
    assert plain.stdout.count(SOCKET) == 2
    hub_block = plain.stdout.split("\n  hub:\n", 1)[1].split("\n  spoke:\n", 1)[0]
    assert SOCKET not in hub_block

    services = run(["docker-compose", "-f", str(COMPOSE_FILE), "config", "--services"],
                   env={"DOCKER_GID": "999"}).stdout.split()
    assert sorted(services) == ["hub", "proxy", "spoke"]
    proxy_block = plain.stdout.split("\n  proxy:\n", 1)[1].split("\n  spoke:\n", 1)[0]
    assert "profiles:\n    - proxy\n" in proxy_block  # started only with --profile proxy
    behind = _config("--profile", "proxy", env={
        "SPOKEHUB_HUB_ARGS": "--insecure-http", "SPOKEHUB_PUBLIC_URL": "https://hub.example.org",
        "SPOKEHUB_PROXY_HOST": "hub.example.org"})
    assert behind.returncode == 0, behind.stderr
    assert "--insecure-http" in behind.stdout
    assert "reverse-proxy --from hub.example.org --to hub:8443" in behind.stdout

    # Without the socket's group the spoke could not use the engine: refuse, and say how.
    missing = run(["docker-compose", "-f", str(COMPOSE_FILE), "config"],
                  env={"DOCKER_GID": ""}, check=False)
    assert missing.returncode != 0
    assert "stat -c %g /var/run/docker.sock" in missing.stderr


# ------------------------------------------------------------------------- the spoke's start
def _fake_spoke(tmp_path: Path) -> dict[str, str]:
    """A `spoke` that records its arguments and standard input, on PATH before the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "spoke"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$*" > "$RECORD"\n'
                    'if [ "$3" = "-" ]; then cat >> "$RECORD"; fi\nexit 0\n')
    fake.chmod(0o755)
    python = Path(shutil.which("python3") or "/usr/bin/python3")
    (bin_dir / "python3").symlink_to(python)
    data = tmp_path / "data"
    data.mkdir()
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "SPOKEHUB_SPOKE_DIR": str(data),
            "RECORD": str(tmp_path / "record")}


def test_spoke_start_joins_once_then_runs(tmp_path: Path) -> None:
    start = str(DEPLOY / "spoke" / "spokehub-spoke-start")
    env = _fake_spoke(tmp_path)
    record = Path(env["RECORD"])

    none = run([start], env=env, check=False)
    assert none.returncode == 2 and "SPOKEHUB_JOIN_TOKEN" in none.stderr

    joined = run([start, "--max-boxes", "3"], env={**env, "SPOKEHUB_JOIN_TOKEN": "shj1.secret",
                                                     "SPOKEHUB_JOIN_ARGS": "--name web1"})
    assert joined.returncode == 0
    argv, stdin = record.read_text().split("\n", 1)
    assert argv == "join --token-file - --name web1 --max-boxes 3"  # the token is not in argv
    assert stdin.strip() == "shj1.secret"

    token_file = tmp_path / "token"
    token_file.write_text("shj1.fromfile\n")
    run([start], env={**env, "SPOKEHUB_JOIN_TOKEN_FILE": str(token_file)})
    assert record.read_text().strip() == f"join --token-file {token_file}"

    Path(env["SPOKEHUB_SPOKE_DIR"], "spoke.json").write_text(json.dumps({"enrolled": True}))
    run([start, "--max-boxes", "3"], env={**env, "SPOKEHUB_JOIN_TOKEN": "shj1.spent"})
    assert record.read_text().strip() == "run --max-boxes 3"


# ------------------------------------------------------------------------- systemd units
UNITS = DEPLOY / "systemd"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNITS / name)
    return parser


def _env_example(name: str) -> dict[str, str]:
    values = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def _expand(command: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: ${VAR} is one word, $VAR splits at spaces."""
    words: list[str] = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$\{(\w+)\}", word)
        split = re.fullmatch(r"\$(\w+)", word)
        if whole:
            words.append(env[whole.group(1)])
        elif split:
            words.extend(env[split.group(1)].split())
        else:
            assert "$" not in word, word
            words.append(word)
    return words


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))


def test_systemd_units_are_hardened_and_their_flags_exist() -> None:
    hub, spoke = _unit("spokehub-hub.service"), _unit("spokehub-spoke.service")
    for unit, data_dir in ((hub, "/var/lib/spokehub/hub"), (spoke, "/var/lib/spokehub/spoke")):
        svc = unit["Service"]
        assert svc["Restart"] == "on-failure"
        assert svc["User"] and svc["User"] != "root"
        assert svc["NoNewPrivileges"] == "yes" and svc["PrivateTmp"] == "yes"
        assert svc["ProtectSystem"] == "strict" and svc["ReadWritePaths"] == data_dir
        assert svc["StateDirectory"] == data_dir.removeprefix("/var/lib/")
        assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "docker" in spoke["Service"]["SupplementaryGroups"].split()
    assert "3" in spoke["Service"]["RestartPreventExitStatus"].split()  # refused for good

    hub_env = _env_example("hub.env.example")
    argv = _expand(hub["Service"]["ExecStart"], hub_env)
    assert argv[:2] == ["/opt/spokehub/bin/hub", "serve"]
    assert argv[argv.index("--data-dir") + 1] == "/var/lib/spokehub/hub"
    known = _flags(run([HUB, "serve", "--help"]).stdout)
    assert {a for a in argv if a.startswith("--")} <= known

    spoke_env = _env_example("spoke.env.example")
    argv = _expand(spoke["Service"]["ExecStart"], spoke_env)
    assert argv[0] == "/opt/spokehub/bin/spokehub-spoke-start"
    # The start script passes these to `spoke run`, or to `spoke join` on the first start.
    both = _flags(run([SPOKE, "run", "--help"]).stdout) & _flags(run([SPOKE, "join", "--help"]).stdout)
    assert {a for a in argv if a.startswith("--")} <= both
    join_only = _flags(run([SPOKE, "join", "--help"]).stdout)
    assert {a for a in spoke_env["SPOKEHUB_JOIN_ARGS"].split() if a.startswith("--")} <= join_only
    environment = dict(pair.split("=", 1) for pair in spoke["Service"]["Environment"].split())
    assert environment["SPOKEHUB_SPOKE_DIR"] == "/var/lib/spokehub/spoke"


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # pragma: no cover - the configparser test above still ran
        pytest.skip("!!! SKIPPING: systemd-analyze is not installed (apt-get install systemd)")
    # verify wants the ExecStart programs to exist: point /opt/spokehub/bin at real ones.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hub").symlink_to(Path(sys.executable).parent / "hub")
    (bin_dir / "spokehub-spoke-start").symlink_to(DEPLOY / "spoke" / "spokehub-spoke-start")
    units = []
    for name in ("spokehub-hub.service", "spokehub-spoke.service"):
        text = (UNITS / name).read_text().replace("/opt/spokehub/bin/", f"{bin_dir}/")
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    proc = run([analyze, "verify", *units], check=False)
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure here.
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        proc.stdout + proc.stderr)
