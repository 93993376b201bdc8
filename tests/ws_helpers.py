"""Helpers for end-to-end workstream tests: the scripted LLM on its own thread, the hub's model
configuration pointing at it, and polling on a workstream's state and events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.cluster import Hub, wait_until
from tests.llm_server import LLMServer, RecordedRequest, Step

OPENAI_KEY = "sk-hub-held-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-hub-held-0123456789"


class ThreadedLLM:
    """The scripted LLM server on a private event loop in a thread, so synchronous tests
    (which drive real hub and spoke processes) can script it and release hung answers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="scripted-llm", daemon=True)
        self.server = LLMServer()

    def start(self) -> ThreadedLLM:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def script(self, name: str, steps: Sequence[Step], model: str | None = None) -> str:
        """Register a script; returns the marker to put in the first user message."""
        done = threading.Event()

        def add() -> None:
            self.server.add_script(name, steps, model=model)
            done.set()

        self.loop.call_soon_threadsafe(add)
        done.wait(10)
        return f"[script:{name}]"

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.server.release)

    @property
    def hanging(self) -> int:
        return self.server.hanging

    def requests(self) -> list[RecordedRequest]:
        return list(self.server.requests)


def write_hub_models(hub_dir: Path, llm: ThreadedLLM) -> None:
    """``hub.toml``: an OpenAI-format primary and an Anthropic-format fallback, both scripted."""
    hub_dir.mkdir(parents=True, exist_ok=True)
    (hub_dir / "hub.toml").write_text(f"""
[models.main]
provider = "openai"
base_url = "{llm.server.openai_url}"
model = "m-openai"
api_key = "{OPENAI_KEY}"

[models.claude]
provider = "anthropic"
base_url = "{llm.server.url}"
model = "m-claude"
api_key = "{ANTHROPIC_KEY}"
context_window = 200000

[model]
default = "main"
fallback = ["claude"]
""")


def ws_row(hub: Hub, ws_id: str) -> dict[str, Any]:
    return dict(hub.client().request("GET", f"/api/ws/{ws_id}"))


def ws_events(hub: Hub, ws_id: str, after: int = 0) -> list[dict[str, Any]]:
    return list(hub.client().request("GET", f"/api/ws/{ws_id}/events?after={after}"))


def wait_state(hub: Hub, ws_id: str, *states: str, timeout: float = 60) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        row = ws_row(hub, ws_id)
        return row if row["state"] in states else None

    try:
        return dict(wait_until(reached, timeout, what=f"{ws_id} to reach {states}"))
    except AssertionError:
        raise AssertionError(f"{ws_id} stuck in {ws_row(hub, ws_id)['state']}; events: "
                             f"{[(e['kind'], e['data']) for e in ws_events(hub, ws_id)]}") from None


def wait_event(hub: Hub, ws_id: str, kind: str, timeout: float = 60) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((e for e in ws_events(hub, ws_id) if e["kind"] == kind), None)

    return dict(wait_until(found, timeout, what=f"a {kind} event in {ws_id}"))


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


def start_ws(hub: Hub, message: str, **body: Any) -> str:
    row = hub.client().request("POST", "/api/ws", {"message": message, **body})
    return str(row["id"])
