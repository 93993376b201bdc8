"""Helpers of tests/test_deploy.py: build the deploy/ images here, run docker and docker-compose.

The images are built by deploy/build-images.sh itself, the way an operator without a registry
would: ``--local-base`` (a debootstrapped Debian base, as no image can be pulled here),
``--wheelhouse`` (the wheels are made on the host, whose pip can reach PyPI, and installed with
``--no-index``) and ``--hash-tag`` (each image is tagged with a hash of its inputs and not built
again while they are unchanged, so a second run takes seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
REPOS = ("spokehub-hub", "spokehub-spoke", "spokehub-sandbox")


def run(args: list[str], *, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 300, stdin_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure the assertion carries its output."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=stdin_text,
                          env={**os.environ, **(env or {})}, stdin=None if stdin_text else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
    return proc


def build_images() -> dict[str, str]:
    """{"hub": image, "spoke": image, "sandbox": image}, built (or found) by build-images.sh."""
    env = {"PYTHON": sys.executable}  # the venv's interpreter: CPython 3.11, with pip
    proc = run(["sh", str(DEPLOY / "build-images.sh"), "--local-base", "--wheelhouse",
                "--hash-tag"], env=env, timeout=1500)
    images = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "image":
            images[parts[1]] = parts[2]
    assert set(images) == {"hub", "spoke", "sandbox"}, proc.stdout[-2000:]
    _prune_older(set(images.values()))
    return images


def _prune_older(keep: set[str]) -> None:
    """Remove this test's earlier hash-tagged images (each tree change makes new ones); one a
    container still uses stays (docker refuses), and so do images tagged otherwise."""
    for repo in REPOS:
        out = run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repo]).stdout
        old = [name for name in out.split() if name.split(":", 1)[1].startswith("h-")
               and name not in keep]
        if old:
            run(["docker", "image", "rm", *old], check=False)


def compose(project: str, env: dict[str, str], *args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run(["docker-compose", "-p", project, "-f", str(COMPOSE_FILE), *args], env=env,
               check=check, timeout=timeout)


def inspect(name: str) -> dict[str, Any]:
    doc = json.loads(run(["docker", "inspect", name]).stdout)
    assert len(doc) == 1, doc
    return dict(doc[0])


def remove_spoke_leftovers(spoke_name: str) -> None:
    """Boxes, workspace volumes and the box network a spoke made: whatever still exists."""
    label = f"label=spokehub.spoke={spoke_name}"
    for kind in ("container", "volume", "network"):
        ids = run(["docker", kind, "ls", "-q", *(["-a"] if kind == "container" else []),
                   "--filter", label]).stdout.split()
        if ids:
            force = ["-f"] if kind != "network" else []
            run(["docker", kind, "rm", *force, *ids], check=False)
