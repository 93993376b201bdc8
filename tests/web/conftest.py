"""Browser tests: Playwright for Python driving Debian's Chromium against real hubs and spokes.

One browser per module (starting Chromium is the slow part); each test gets a fresh context
(no cookies), so signing in is part of what it tests. The cluster is per module too: one hub
with its models pointing at the scripted LLM, and one spoke that stays up; tests that join,
stop or revoke spokes make their own. Screenshots go to docs/screenshots/ (the README shows
them). Never downloads a browser: no Chromium on PATH skips loudly.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.cluster import Hub, Spoke
from tests.web_client import admin_password
from tests.ws_helpers import ThreadedLLM, write_hub_models

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("!!! SKIPPING BROWSER TESTS: no `chromium` on PATH (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # a bound on a hang, not a speed requirement
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def web_llm() -> Iterator[ThreadedLLM]:
    server = ThreadedLLM().start()
    yield server
    server.stop()


class Cluster:
    """A module's hub (models on the scripted LLM), its admin password, and the spokes the
    module's tests start (stopped and their boxes removed at the end)."""

    def __init__(self, tmp: Path, llm: ThreadedLLM) -> None:
        self.tmp = tmp
        self.llm = llm
        self.hub = Hub(tmp)
        write_hub_models(self.hub.dir, llm)
        self.started: list[Spoke] = []
        self.password = ""

    def start(self) -> Cluster:
        self.hub.start()
        self.password = admin_password(self.hub)
        return self

    def new_spoke(self, name: str | None = None, extra: list[str] | None = None) -> Spoke:
        spoke = Spoke(self.tmp, self.hub, name=name or f"web-{uuid.uuid4().hex[:6]}", extra=extra)
        self.started.append(spoke)
        return spoke

    def stop(self) -> None:
        for s in self.started:
            s.stop()
        self.hub.stop()
        client = docker.from_env()
        for s in self.started:
            for c in client.containers.list(all=True, filters={"label": f"spokehub.spoke={s.name}"}):
                c.remove(force=True)
            for v in client.volumes.list(filters={"label": f"spokehub.spoke={s.name}"}):
                v.remove(force=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, sandbox_image: str,
            web_llm: ThreadedLLM) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("web"), web_llm).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def home_spoke(cluster: Cluster) -> Spoke:
    """A spoke that stays connected for the whole module."""
    spoke = cluster.new_spoke("home")
    spoke.join()
    return spoke


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context and page; page errors (uncaught exceptions, CSP violations)
    fail the test."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(20_000)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    pg.on("console", lambda msg: problems.append(f"console: {msg.text}")
          if msg.type == "error" and "Content Security Policy" in msg.text else None)
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    context.close()
    assert not problems, problems


def goto(page: Any, url: str, reload: bool = False) -> None:
    """``page.goto`` (or ``reload``), again after ``ERR_NETWORK_CHANGED``: Chromium drops a
    navigation in flight when the machine's network interfaces change, and Docker changes
    them whenever some container (here, or another test's) starts or stops."""
    for attempt in range(3):
        try:
            page.reload() if reload else page.goto(url)
            return
        except Exception as err:
            if "ERR_NETWORK_CHANGED" not in str(err) or attempt == 2:
                raise


def sign_in(page: Any, hub: Hub, user: str, password: str, path: str = "/") -> None:
    """Open ``path`` signed out (sent to /signin), sign in, and land back on ``path``."""
    goto(page, hub.url + path)
    page.wait_for_url("**/signin?next=**")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#who:not(:empty)")  # only signed-in pages have it
    assert page.url.startswith(hub.url + path.split("#")[0]), page.url


def screenshot(page: Any, name: str, **kw: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), **kw)
