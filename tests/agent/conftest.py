"""Fixtures for the agent tests: the scripted LLM server and a fake box behind a BoxSandbox."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from spoke.agent.tools import BoxSandbox
from spoke.boxes.base import BoxSpec
from spoke.boxes.fake_boxes import FakeBoxManager
from tests.llm_server import LLMServer


@pytest.fixture
async def llm_server() -> AsyncIterator[LLMServer]:
    server = await LLMServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def boxes() -> AsyncIterator[FakeBoxManager]:
    manager = FakeBoxManager("agent-tests")
    yield manager
    await manager.close()


@pytest.fixture
async def sandbox(boxes: FakeBoxManager) -> BoxSandbox:
    box_id = "bx_" + secrets.token_hex(8)
    await boxes.create(box_id, BoxSpec(image="test"))
    return BoxSandbox(boxes, box_id)
