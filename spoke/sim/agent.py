"""Simulated agent replies: the real workstream runner and agent loop, with a model that answers
from memory after a configurable delay.

Everything a hub sees of a workstream (``ws.start``/``ws.send``, the numbered event outbox,
acknowledgements, resends after a reconnect, capacity in heartbeats) is the real
:class:`spoke.workstreams.WorkstreamRunner` and :class:`spoke.agent.loop.AgentLoop`; only the
model client is replaced, so no LLM and no relay is needed. A simulated spoke advertises the
model alias :data:`SIM_MODEL` as its own, and the hub routes work for it there. Pinned by
tests/sim/test_spoke_sim.py::test_steady_and_burst_answer_every_call (a workstream through the
hub's REST API).
"""

from __future__ import annotations

import asyncio
from typing import Any

from protocol import verbs as v
from spoke.agent.llm import ModelClient, OnText, TurnResult
from spoke.boxes.base import BoxManager
from spoke.policy import Policy
from spoke.workstreams import WorkstreamRunner

SIM_MODEL = "sim"
SIM_REPLY_MARK = "(simulated) got:"  # in every simulated reply


class SimModelClient:
    """A :class:`~spoke.agent.llm.ModelClient` that waits ``latency_s``, then streams one short
    reply naming the spoke and quoting the last user message; it never calls tools."""

    def __init__(self, spoke: str, latency_s: float = 0.0) -> None:
        self.spoke, self.latency_s = spoke, latency_s

    async def turn(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                   on_text: OnText) -> TurnResult:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        asked = next((str(m.get("text", "")) for m in reversed(messages)
                      if m.get("role") == "user"), "")
        text = f"{self.spoke} {SIM_REPLY_MARK} {asked[:200]}"
        await on_text(text)
        return TurnResult(text=text, tool_calls=[], input_tokens=max(1, len(asked) // 4),
                          output_tokens=max(1, len(text) // 4), model_alias=SIM_MODEL,
                          stop_reason="end")


class SimRunner(WorkstreamRunner):
    """The real runner whose every workstream talks to a :class:`SimModelClient`."""

    def __init__(self, spoke: str, boxes: BoxManager, policy: Policy, *, image: str,
                 max_workstreams: int, reply_latency_s: float) -> None:
        super().__init__(boxes, policy, default_image=image, max_workstreams=max_workstreams)
        self.spoke, self.reply_latency_s = spoke, reply_latency_s

    def _client(self, refs: list[v.ModelRef]) -> ModelClient:
        return SimModelClient(self.spoke, self.reply_latency_s)
