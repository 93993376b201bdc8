"""Real hub and spoke processes for end-to-end tests (loopback, real TLS, real Docker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.http_client import HubClient

HUB = shutil.which("hub") or "hub"
SPOKE = shutil.which("spoke") or "spoke"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll for an event that must happen; the timeout only bounds a hang, it asserts no speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log_path = args, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("ab")
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **(env or {})}, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    def wait(self, timeout: float = 30) -> int:
        return self.popen.wait(timeout)


class Hub:
    def __init__(self, tmp: Path, name: str = "hub") -> None:
        self.dir = tmp / name  # several hubs in one tmp dir: tests/multihub.py
        self.port = free_port()
        self.proc: Proc | None = None
        self.url = f"https://127.0.0.1:{self.port}"
        self.extra: list[str] = []  # more `hub serve` flags

    def start(self) -> None:
        self.proc = Proc([HUB, "serve", "--data-dir", str(self.dir), "--port", str(self.port),
                          "--log-level", "DEBUG", *self.extra], self.dir.parent / f"hub-{self.port}.log")

        def ready() -> bool:
            assert self.proc is not None and self.proc.alive(), f"hub died:\n{self.proc.output() if self.proc else ''}"
            try:
                self.client().request("GET", "/healthz")
                return True
            except Exception:
                return False

        wait_until(ready, what="hub /healthz")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def client(self) -> HubClient:
        return HubClient.from_data_dir(self.dir)

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([HUB, *args], capture_output=True, text=True, timeout=timeout,
                             env=self.cli_env())
        if check and res.returncode != 0:
            raise AssertionError(f"hub {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    def cli_env(self) -> dict[str, str]:
        """The environment the ``hub`` CLI runs with, pointed at this hub."""
        return {**os.environ, "SPOKEHUB_HUB_DIR": str(self.dir)}

    def cli_json(self, *args: str) -> Any:
        res = self.cli(*args, "--json", check=True)
        return json.loads(res.stdout)

    def token(self, name: str, ttl: str = "1h") -> str:
        return str(self.client().request("POST", "/api/tokens", {"name": name, "ttl": ttl})["token"])

    def spoke_row(self, name: str) -> dict[str, Any] | None:
        for row in self.client().request("GET", "/api/spokes"):
            if row["name"] == name:
                return dict(row)
        return None

    def connected(self, name: str) -> bool:
        row = self.spoke_row(name)
        return bool(row and row["connected"])


class Spoke:
    def __init__(self, tmp: Path, hub: Hub, name: str | None = None, extra: list[str] | None = None) -> None:
        self.hub = hub
        self.name = name or f"sp-{uuid.uuid4().hex[:8]}"
        self.dir = tmp / f"spoke-{self.name}"
        self.extra = extra or []
        self.proc: Proc | None = None

    def join(self, token: str | None = None, wait: bool = True) -> Proc:
        token = token or self.hub.token(self.name)
        self.proc = Proc([SPOKE, "join", "--data-dir", str(self.dir), *self.extra, token],
                         self.dir.parent / f"{self.name}.log")
        if wait:
            self.wait_connected()
        return self.proc

    def run(self, wait: bool = True) -> Proc:
        self.proc = Proc([SPOKE, "run", "--data-dir", str(self.dir), *self.extra], self.dir.parent / f"{self.name}.log")
        if wait:
            self.wait_connected()
        return self.proc

    def wait_connected(self) -> None:
        def ok() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise AssertionError(f"spoke exited:\n{self.proc.output()}")
            return self.hub.connected(self.name)

        wait_until(ok, what=f"spoke {self.name} connected")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
