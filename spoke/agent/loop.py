"""The agent loop: one workstream's conversation, on the spoke.

One user message in, then model turn → (approvals) → tool runs → model turn … until the model
answers without calling tools, or the turn limit. Everything that happens is reported through
``emit(kind, data)``; the caller numbers, persists and streams those events (the hub's log is
the source of truth, so the events are the contract — keep their kinds and fields stable):

================== =====================================================================
``state``          ``{state}``: thinking | running | attention | idle | error
``user_message``   ``{text}``
``text_delta``     ``{text}`` — coalesced: at most every ~50 ms or 2 KiB
``assistant_message`` ``{text}`` — a model turn's full text (and the final answer)
``tool_call``      ``{call_id, tool, args, approval}`` — approval: auto | ask
``approval_requested`` ``{call_id, tool, args}``
``approval_resolved``  ``{call_id, approved, reason}``
``tool_result``    ``{call_id, tool, output, is_error}``
``usage``          ``{model, input_tokens, output_tokens}`` — one per model turn
``error``          ``{message}``
``notice``         ``{message}`` (``retry``: true when a broken model call is asked again and
                   the text streamed so far is void)
================== =====================================================================

Cancellation is the caller cancelling the task that runs :meth:`AgentLoop.handle_message`:
tool processes are killed through the sandbox, the transcript is left valid for the next
message, the state goes back to idle, and ``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from spoke.agent.llm import INTERRUPTED, ModelClient, ModelError, ToolCall, TurnResult
from spoke.agent.tools import DEFAULT_POLICY, TOOLS, Sandbox, ToolOutcome, run_tool

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
AskApproval = Callable[[ToolCall], Awaitable[tuple[bool, str]]]
# Asked when a model call failed: True when it is worth asking again (after waiting, if need
# be, for the way to the model to come back). See AgentLoop._model_turn.
ModelRetry = Callable[[ModelError, ModelClient], Awaitable[bool]]
MODEL_RETRIES = 3

DEFAULT_SYSTEM = """\
You are a capable software agent working inside a sandboxed Linux container (a "box").
Your working directory is /workspace; files you create there persist for this conversation.
Use the tools to inspect, create, edit and run things rather than guessing, and check your
work by running it. Some tool calls need an operator's approval; if one is denied, respect the
reason given and choose another approach or ask. Keep answers concise and say what you did."""

COALESCE_S = 0.05
COALESCE_BYTES = 2048


class _Coalescer:
    """Buffers streamed text so a chatty model cannot flood the event log with 1-token events.

    A delta goes out at once if nothing was sent for :data:`COALESCE_S`; otherwise it waits
    until that interval has passed (a timer) or :data:`COALESCE_BYTES` have piled up. The loop
    flushes before every other event, so text never arrives after what followed it.
    """

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._buf: list[str] = []
        self._size = 0
        self._last = 0.0
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def add(self, text: str) -> None:
        if not text:
            return
        self._buf.append(text)
        self._size += len(text.encode())
        if self._size >= COALESCE_BYTES or time.monotonic() - self._last >= COALESCE_S:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(max(0.0, self._last + COALESCE_S - time.monotonic()))
        self._timer = None  # from here on nobody cancels us mid-emit
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if self._timer is not None and self._timer is not asyncio.current_task():
                self._timer.cancel()
                self._timer = None
            if not self._buf:
                return
            text = "".join(self._buf)
            self._buf.clear()
            self._size = 0
            self._last = time.monotonic()
            await self._emit("text_delta", {"text": text})


class AgentLoop:
    """One workstream's agent. Not re-entrant: one :meth:`handle_message` at a time.

    ``history`` is the neutral transcript (see :mod:`spoke.agent.llm`); pass a saved one
    to resume a conversation, here or on another spoke.
    """

    def __init__(self, *, client: ModelClient, sandbox: Sandbox, emit: Emit, ask: AskApproval,
                 auto_approve: bool = False, policy: dict[str, str] | None = None,
                 max_turns: int = 30, system: str = DEFAULT_SYSTEM,
                 history: list[dict[str, Any]] | None = None,
                 model_retry: ModelRetry | None = None) -> None:
        self.client = client
        self.model_retry = model_retry
        self.sandbox = sandbox
        self.ask = ask
        self.auto_approve = auto_approve
        self.policy = {**DEFAULT_POLICY, **(policy or {})}
        self.max_turns = max_turns
        self.system = system
        self.history: list[dict[str, Any]] = list(history or [])
        self._raw_emit = emit
        self._deltas = _Coalescer(emit)
        self._state: str | None = None
        self._partial: list[str] | None = None  # text streamed in the current model turn
        self._results: dict[str, dict[str, Any]] = {}  # finished results of the current calls

    # ------------------------------------------------------------------ events
    async def _emit(self, kind: str, data: dict[str, Any]) -> None:
        await self._deltas.flush()
        await self._raw_emit(kind, data)

    async def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            await self._emit("state", {"state": state})

    async def _on_text(self, text: str) -> None:
        if self._partial is not None:
            self._partial.append(text)
        await self._deltas.add(text)

    # ------------------------------------------------------------------ the loop
    async def handle_message(self, text: str) -> str:
        """Run one user message to its final answer; return the answer's text."""
        self.history.append({"role": "user", "text": text})
        await self._emit("user_message", {"text": text})
        return await self._answer()

    async def continue_turn(self) -> str:
        """Finish the turn the history ends in: its spoke was lost mid-turn, and this one
        resumes it from the hub's transcript. Tool calls left without a result are answered
        as interrupted by the model client's ``normalize`` (never re-run silently); the
        model decides what to do next. Pinned by tests/agent/test_loop.py::
        test_continue_turn_answers_an_interrupted_call_and_finishes and
        tests/hub/test_workstreams_memory.py."""
        await self._emit("notice", {"message": "continuing the interrupted turn from the "
                                               "hub's transcript"})
        return await self._answer()

    async def _answer(self) -> str:
        try:
            return await self._run()
        except asyncio.CancelledError:
            self._settle("cancelled by the operator")
            await self._deltas.flush()
            await self._set_state("idle")
            raise
        except ModelError as err:
            await self._fail(err.message)
            raise
        except Exception as err:
            inner: BaseException = err
            while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
                inner = inner.exceptions[0]  # a TaskGroup wraps what a tool task raised
            await self._fail(f"internal error in the agent loop: {type(inner).__name__}: {inner}")
            raise

    async def _fail(self, message: str) -> None:
        self._settle("not run: the turn failed")
        await self._emit("error", {"message": message})
        await self._set_state("error")

    async def _run(self) -> str:
        for _ in range(self.max_turns):
            await self._set_state("thinking")
            result = await self._model_turn()
            self._partial = None
            calls = result.tool_calls
            self.history.append({"role": "assistant", "text": result.text,
                                 "tool_calls": [asdict(c) for c in calls]})
            if result.text or not calls:
                await self._emit("assistant_message", {"text": result.text})
            await self._emit("usage", {"model": result.model_alias,
                                       "input_tokens": result.input_tokens,
                                       "output_tokens": result.output_tokens})
            if not calls:
                await self._set_state("idle")
                return result.text
            self._results = {}
            results = await self._run_calls(calls)
            self.history.append({"role": "tool", "results": results})
            self._results = {}
        note = (f"[spokehub] Stopped after {self.max_turns} model turns without a final answer "
                "(the turn limit). Send another message to let the agent continue.")
        self.history.append({"role": "assistant", "text": note, "tool_calls": []})
        await self._emit("assistant_message", {"text": note})
        await self._set_state("idle")
        return note

    async def _model_turn(self) -> TurnResult:
        """One model call, asked again (at most MODEL_RETRIES times) when ``model_retry`` says
        the failure was the way to the model and that way is back, e.g. the hub's relay
        during a hub restart. The half-streamed answer is dropped (a ``notice`` says so and
        the web page discards the unfinished text): ``history`` only ever gets whole turns.
        Pinned by tests/agent/test_loop.py::test_a_model_call_is_asked_again_when_the_way_is_back
        and tests/test_kill_and_restart.py::test_a_hub_restart_mid_turn_loses_nothing."""
        for attempt in range(MODEL_RETRIES + 1):
            self._partial = []
            client = self.client
            try:
                return await client.turn(self.system, self.history, TOOLS, self._on_text)
            except ModelError as err:
                if attempt == MODEL_RETRIES or self.model_retry is None:
                    raise
                if not await self.model_retry(err, client):
                    raise
                await self._emit("notice", {"message": f"the connection to the model broke "
                                            f"({err.message}); asking again", "retry": True})
        raise AssertionError("unreachable")

    def _settle(self, why: str) -> None:
        """Leave the transcript valid after an interrupted turn: keep streamed text, and give
        every unanswered tool call a result, so the next message can continue from here."""
        if self._partial:
            self.history.append({"role": "assistant", "tool_calls": [],
                                 "text": "".join(self._partial) + " [interrupted]"})
        self._partial = None
        last = self.history[-1] if self.history else {}
        if last.get("role") == "assistant" and last.get("tool_calls"):
            self.history.append({"role": "tool", "results": [
                self._results.get(c["id"]) or {"call_id": c["id"], "name": c["name"],
                                               "output": f"{INTERRUPTED}: {why}",
                                               "is_error": True}
                for c in last["tool_calls"]]})
        self._results = {}

    # ------------------------------------------------------------------ tool calls
    def _mode(self, call: ToolCall) -> str:
        if self.auto_approve or call.name not in self.policy:
            return "auto"  # unknown tools only produce an error for the model: no need to ask
        return "ask" if self.policy[call.name] == "ask" else "auto"

    async def _run_calls(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        """Ask for every approval the turn needs (concurrently), then run the approved calls
        concurrently; return the results in the order the model made the calls."""
        modes = {c.id: self._mode(c) for c in calls}
        for call in calls:
            await self._emit("tool_call", {"call_id": call.id, "tool": call.name,
                                           "args": call.arguments, "approval": modes[call.id]})
        asks = [c for c in calls if modes[c.id] == "ask"]
        decisions: dict[str, tuple[bool, str]] = {c.id: (True, "") for c in calls}
        if asks:
            for call in asks:
                await self._emit("approval_requested", {"call_id": call.id, "tool": call.name,
                                                        "args": call.arguments})
            await self._set_state("attention")
            async with asyncio.TaskGroup() as group:
                for call in asks:
                    group.create_task(self._decide(call, decisions))
        if any(approved for approved, _ in decisions.values()):
            await self._set_state("running")
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(self._execute(call, decisions[call.id]))
        return [self._results[c.id] for c in calls]

    async def _decide(self, call: ToolCall, decisions: dict[str, tuple[bool, str]]) -> None:
        try:
            approved, reason = await self.ask(call)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a broken approval channel must not run the tool
            approved, reason = False, f"the approval could not be obtained ({err})"
        decisions[call.id] = (bool(approved), str(reason or ""))
        await self._emit("approval_resolved", {"call_id": call.id, "approved": bool(approved),
                                               "reason": str(reason or "")})

    async def _execute(self, call: ToolCall, decision: tuple[bool, str]) -> None:
        approved, reason = decision
        if approved:
            outcome = await run_tool(self.sandbox, call.name, call.arguments)
        else:
            outcome = ToolOutcome(f"denied by the operator: {reason or 'no reason given'}", True)
        self._results[call.id] = {"call_id": call.id, "name": call.name,
                                  "output": outcome.output, "is_error": outcome.is_error}
        await self._emit("tool_result", {"call_id": call.id, "tool": call.name,
                                         "output": outcome.output, "is_error": outcome.is_error})
