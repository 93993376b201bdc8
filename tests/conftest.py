"""Fixtures for end-to-end tests: the sandbox image, a real hub, real spokes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import pytest

from tests.cluster import Hub, Spoke
from tests.ws_helpers import ThreadedLLM, write_hub_models

if TYPE_CHECKING:
    from tests.pg import PgServer


def _docker_ok() -> str | None:
    try:
        docker.from_env().ping()
        return None
    except Exception as err:  # pragma: no cover - only where no engine exists
        return f"no Docker engine reachable: {err}"


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    reason = _docker_ok()
    if reason:
        pytest.skip(f"!!! SKIPPING DOCKER TESTS: {reason}")
    from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image

    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[sandbox image] {line}"))
    return DEFAULT_IMAGE


@pytest.fixture
def hub(tmp_path: Path, sandbox_image: str) -> Iterator[Hub]:
    h = Hub(tmp_path)
    h.start()
    yield h
    h.stop()


@pytest.fixture
def spokes(tmp_path: Path) -> Iterator[list[Spoke]]:
    """Spokes started by a test; all stopped and their boxes removed afterwards."""
    started: list[Spoke] = []
    yield started
    for s in started:
        s.stop()
    client = docker.from_env()
    for s in started:
        for c in client.containers.list(all=True, filters={"label": f"spokehub.spoke={s.name}"}):
            c.remove(force=True)
        for v in client.volumes.list(filters={"label": f"spokehub.spoke={s.name}"}):
            v.remove(force=True)


@pytest.fixture
def spoke(tmp_path: Path, hub: Hub, spokes: list[Spoke]) -> Spoke:
    s = Spoke(tmp_path, hub)
    spokes.append(s)
    s.join()
    return s


@pytest.fixture
def llm() -> Iterator[ThreadedLLM]:
    """The scripted LLM (the only stand-in), reachable by the hub's model configuration."""
    server = ThreadedLLM().start()
    yield server
    server.stop()


@pytest.fixture
def model_hub(tmp_path: Path, sandbox_image: str, llm: ThreadedLLM) -> Iterator[Hub]:
    """A real hub whose ``hub.toml`` points its models at the scripted LLM."""
    h = Hub(tmp_path)
    write_hub_models(h.dir, llm)
    h.start()
    yield h
    h.stop()


@pytest.fixture
def model_spoke(tmp_path: Path, model_hub: Hub, spokes: list[Spoke]) -> Spoke:
    """A spoke joined to :func:`model_hub` (the ``spoke`` fixture joins the plain ``hub``)."""
    s = Spoke(tmp_path, model_hub)
    spokes.append(s)
    s.join()
    return s


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the session (tests/pg.py); skipped, loudly, where
    PostgreSQL is not installed (CI installs it: deploy/install-deps.sh --test)."""
    from tests import pg

    reason = pg.unavailable()
    if reason:
        pytest.skip(f"!!! SKIPPING POSTGRESQL TESTS: {reason}")
    yield pg.server()
    pg.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped after it): its URL."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)
