"""Fixtures for the box conformance suite: one set of tests, three managers (fake, Docker
through docker exec, Docker through the in-box exec agent).

Every test gets managers with a fresh spoke name, and everything they created is reaped
afterwards. The Docker parameter needs a reachable engine and the locally built sandbox
image; without an engine those tests are skipped loudly, never silently.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import docker
import pytest

from spoke.boxes.base import BoxManager
from spoke.boxes.docker_boxes import DockerBoxManager
from spoke.boxes.fake_boxes import FakeBoxManager
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image
from tests.boxes.helpers import new_box_id

MakeManager = Callable[[], Awaitable[BoxManager]]


def _docker_unreachable() -> str | None:
    try:
        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    reason = _docker_unreachable()
    if reason:
        pytest.skip(f"!!! DOCKER ENGINE ABSENT: Docker box conformance tests NOT RUN ({reason})")
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def box_image(docker_client: docker.DockerClient) -> str:
    """The sandbox image, built locally once (about 35 s, then cached)."""
    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[sandbox image] {line}"))
    return DEFAULT_IMAGE


# "agent": the Docker manager as shipped (commands through the in-box exec agent where the
# image has python3); "docker-exec": the same manager forced onto docker exec
# (spoke/boxes/agent_boxes.py, tests/boxes/test_exec_agent.py).
@pytest.fixture(params=["fake", "docker-exec", "agent"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param != "fake":
        request.getfixturevalue("box_image")
    return str(request.param)


@pytest.fixture
async def make_manager(backend: str) -> AsyncIterator[MakeManager]:
    """Factory for managers of the current backend, each with its own spoke name."""
    made: list[BoxManager] = []

    async def make() -> BoxManager:
        spoke = f"test-{uuid.uuid4().hex[:12]}"
        mgr: BoxManager
        if backend != "fake":
            mgr = DockerBoxManager(spoke, exec_agent=backend == "agent")
        else:
            mgr = FakeBoxManager(spoke, images={DEFAULT_IMAGE})
        made.append(mgr)
        return mgr

    yield make
    for mgr in made:
        try:
            await mgr.reap(keep=set())
        finally:
            await mgr.close()


@pytest.fixture
async def manager(make_manager: MakeManager) -> BoxManager:
    return await make_manager()


@pytest.fixture
async def docker_manager(box_image: str) -> AsyncIterator[DockerBoxManager]:
    """A Docker manager for the Docker-only checks (hardening, labels, volumes)."""
    mgr = DockerBoxManager(f"test-{uuid.uuid4().hex[:12]}")
    yield mgr
    try:
        await mgr.reap(keep=set())
    finally:
        await mgr.close()


@pytest.fixture
def image() -> str:
    return DEFAULT_IMAGE


@pytest.fixture
def box_id() -> str:
    return new_box_id()
