"""Shared helpers for the agent tests: an event recorder and client/loop factories."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from spoke.agent.llm import ModelClient, ModelSpec, ToolCall, make_client
from spoke.agent.loop import AgentLoop
from spoke.agent.tools import BoxSandbox
from tests.llm_server import LLMServer

Provider = Literal["openai", "anthropic"]
PROVIDERS: list[Provider] = ["openai", "anthropic"]


def spec_for(server: LLMServer, provider: Provider, *, alias: str = "main",
             model: str = "scripted-model", **extra: Any) -> ModelSpec:
    base = server.openai_url if provider == "openai" else server.url
    return ModelSpec(alias=alias, provider=provider, base_url=base, api_key="sk-test-" + alias,
                     model=model, **extra)


def client_for(server: LLMServer, provider: Provider, **kwargs: Any) -> ModelClient:
    return make_client(spec_for(server, provider, **kwargs), max_retries=0)


class Recorder:
    """Collects emitted events; the `emit` callback for AgentLoop."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))
        self.changed.set()

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]

    def states(self) -> list[str]:
        return [d["state"] for d in self.of("state")]

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``pred()`` holds: re-checked on every event and every 20 ms."""
        async with asyncio.timeout(timeout):
            while not pred():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.02)


Ask = Callable[[ToolCall], Awaitable[tuple[bool, str]]]


async def never_asked(call: ToolCall) -> tuple[bool, str]:
    raise AssertionError(f"no approval expected, but asked for {call}")


def make_loop(client: ModelClient, sandbox: BoxSandbox, rec: Recorder, *,
              ask: Ask = never_asked, **kwargs: Any) -> AgentLoop:
    return AgentLoop(client=client, sandbox=sandbox, emit=rec.emit, ask=ask, **kwargs)


async def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` every 20 ms (for state with no event to wait on: files, processes)."""
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def read_pid(path: Path) -> int | None:
    """The pid a command wrote to ``path``, once it is there."""
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


def box_path(sandbox: BoxSandbox, path: str) -> Path:
    """Where a /workspace path of a fake box lives on this machine."""
    box = sandbox.manager._boxes[sandbox.box_id]  # type: ignore[attr-defined]
    workspace: Path = box.workspace
    return workspace / path.removeprefix("/workspace/")
