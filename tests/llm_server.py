"""The scripted LLM: the one stand-in this project allows (see docs/DESIGN "Testing").

A small aiohttp server that speaks enough of the OpenAI chat-completions and Anthropic
messages wire formats (streaming and not) for the *official* SDKs to parse, so every test
drives the real client code paths. Nothing here is clever about language: a test says, step
by step, what the "model" answers.

Scripting is stateless per request so concurrent conversations (and separate hub/spoke
processes) all work: the script is picked by a ``[script:NAME]`` marker in the conversation's
first user message, and the step is the number of assistant messages already in the request.
Steps: :class:`Say`, :class:`Call`, :class:`Calls`, :class:`Fail`, :class:`Malformed`,
:class:`Hang`, :class:`Drop`, :class:`Echo`; past the end of a script the model says "done".
A script registered for a specific model (``add_script(..., model="x")``) wins over the generic
one, which is how a test makes the primary model fail while the fallback answers.

Run it in-process (``await LLMServer().start()``) or as a process::

    python -m tests.llm_server --port 0 --scripts scripts.json   # prints "LISTENING <port>"

where ``scripts.json`` maps ``NAME`` (or ``NAME@MODEL``) to a list of JSON steps
(:func:`step_to_json` writes them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.agent.llm_wire import (
    PARK,
    Reply,
    ToolUse,
    anthropic_message,
    anthropic_sse,
    check_anthropic,
    check_openai,
    openai_completion,
    openai_sse,
    wire_error,
)

SCRIPT_RE = re.compile(r"\[script:([\w.\-]+)\]")


# ------------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class Say:
    """Answer with ``text`` (streamed in ``pieces`` deltas) and no tool calls."""

    text: str
    pieces: int = 3


@dataclass(frozen=True)
class Call:
    """Call one tool. ``call_id`` defaults to a fresh id."""

    tool: str
    args: dict[str, Any]
    call_id: str | None = None


@dataclass(frozen=True)
class Calls:
    """Several tool calls in one turn (parallel calls), optionally after some text."""

    calls: list[Call]
    text: str = ""


@dataclass(frozen=True)
class Fail:
    """An HTTP error in the provider's error shape, before any streaming starts."""

    status: int = 500
    message: str = "scripted failure"


@dataclass(frozen=True)
class Malformed:
    """A tool call whose arguments are not valid JSON."""

    tool: str = "bash"
    raw: str = '{"command": "echo hi"'


@dataclass(frozen=True)
class Hang:
    """Stream ``text``, then wait until :meth:`LLMServer.release` or the client hangs up
    (after a release the answer ends normally)."""

    text: str = "thinking"


@dataclass(frozen=True)
class Drop:
    """Stream the start of ``text``, then cut the connection (a network failure mid-answer)."""

    text: str = "partial answer"


@dataclass(frozen=True)
class Echo:
    """Say ``fmt`` with ``{last_tool_result}`` replaced by the request's latest tool results."""

    fmt: str = "the output was: {last_tool_result}"


Step = Say | Call | Calls | Fail | Malformed | Hang | Drop | Echo
_KINDS: dict[str, type] = {"say": Say, "call": Call, "calls": Calls, "fail": Fail,
                           "malformed": Malformed, "hang": Hang, "drop": Drop, "echo": Echo}


def step_to_json(step: Step) -> dict[str, Any]:
    """``{"kind": "call", "tool": ..., ...}``: what the ``--scripts`` file holds."""
    kind = next(k for k, cls in _KINDS.items() if isinstance(step, cls))
    return {"kind": kind, **asdict(step)}


def step_from_json(raw: dict[str, Any]) -> Step:
    raw = dict(raw)
    cls = _KINDS[raw.pop("kind")]
    if cls is Calls:
        raw["calls"] = [Call(**{k: v for k, v in c.items() if k != "kind"}) for c in raw["calls"]]
    step: Step = cls(**raw)
    return step


def write_scripts(path: Path, scripts: dict[str, Sequence[Step]]) -> None:
    """Write a ``--scripts`` file for the subprocess mode."""
    path.write_text(json.dumps({name: [step_to_json(s) for s in steps]
                                for name, steps in scripts.items()}, indent=1))


@dataclass
class RecordedRequest:
    """One request as the server saw it, for assertions."""

    path: str
    model: str | None
    body: dict[str, Any]
    auth: str | None  # the x-api-key value if sent, else the Authorization header
    headers: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------- conversation view
def _text_of(content: Any) -> str:
    """Text of a message's content in either provider's shape (string or list of parts)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, dict):
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_result":
                parts.append(_text_of(block.get("content")))
    return "".join(parts)


def _first_user_text(messages: list[dict[str, Any]]) -> str:
    for msg in messages:
        if msg.get("role") == "user":
            return _text_of(msg.get("content"))
    return ""


def _last_tool_results(provider: str, messages: list[dict[str, Any]]) -> list[str]:
    """The tool results after the last assistant message."""
    out: list[str] = []
    for msg in reversed(messages):
        if msg.get("role") == "assistant":
            break
        if provider == "openai" and msg.get("role") == "tool":
            out.append(_text_of(msg.get("content")))
        elif provider == "anthropic" and isinstance(msg.get("content"), list):
            out.extend(_text_of(b.get("content")) for b in reversed(msg["content"])
                       if isinstance(b, dict) and b.get("type") == "tool_result")
    return list(reversed(out))


# ------------------------------------------------------------------------------ server
class LLMServer:
    """The scripted model endpoint. OpenAI base URL: :attr:`openai_url`; Anthropic: :attr:`url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.scripts: dict[tuple[str, str | None], list[Step]] = {}
        self.requests: list[RecordedRequest] = []
        self.hanging = 0  # requests currently parked in a Hang step
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    # -------------------------------------------------------------- configuration
    def add_script(self, name: str, steps: Sequence[Step], *, model: str | None = None) -> None:
        """Register ``steps`` under ``name`` (only for requests naming ``model``, if given)."""
        self.scripts[(name, model)] = list(steps)

    def release(self) -> None:
        """Let every request parked in a :class:`Hang` step finish."""
        self._release.set()
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> LLMServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_requests(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` requests have arrived (for tests that race a stream)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)

    # -------------------------------------------------------------- handlers
    async def _record(self, request: web.Request, provider: str) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return wire_error(provider, 400, "the body must be a JSON object")
        # The openai SDK sends "Authorization: Bearer KEY"; anthropic 2.x does too, older
        # anthropic SDKs (and curl users) send x-api-key: record whichever came.
        auth = request.headers.get("x-api-key") or request.headers.get("Authorization")
        self.requests.append(RecordedRequest(request.path, body.get("model"), body, auth,
                                             dict(request.headers)))
        async with self._changed:
            self._changed.notify_all()
        problem = _invalid(provider, body)
        if problem:
            return wire_error(provider, 400, problem)
        return body

    def _step(self, provider: str, body: dict[str, Any]) -> Step:
        messages = body["messages"]
        match = SCRIPT_RE.search(_first_user_text(messages))
        name = match.group(1) if match else "default"
        steps = self.scripts.get((name, body.get("model"))) or self.scripts.get((name, None), [])
        index = sum(1 for m in messages if m.get("role") == "assistant")
        return steps[index] if index < len(steps) else Say("done")

    def _reply(self, provider: str, step: Step, messages: list[dict[str, Any]]) -> Reply:
        if isinstance(step, Say):
            return Reply(text=step.text, pieces=step.pieces)
        if isinstance(step, Echo):
            results = "\n".join(_last_tool_results(provider, messages))
            return Reply(text=step.fmt.replace("{last_tool_result}", results))
        if isinstance(step, Call):
            step = Calls([step])
        if isinstance(step, Calls):
            return Reply(text=step.text, tools=[
                ToolUse(c.call_id or _call_id(provider), c.tool, json.dumps(c.args))
                for c in step.calls])
        if isinstance(step, Malformed):
            return Reply(tools=[ToolUse(_call_id(provider), step.tool, step.raw)])
        if isinstance(step, Drop):
            return Reply(text=step.text, drop=True)
        assert isinstance(step, Hang)
        return Reply(text=step.text, hang=True)

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "openai")

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "anthropic")

    async def _serve(self, request: web.Request, provider: str) -> web.StreamResponse:
        body = await self._record(request, provider)
        if isinstance(body, web.Response):
            return body
        step = self._step(provider, body)
        if isinstance(step, Fail):
            return wire_error(provider, step.status, step.message)
        reply = self._reply(provider, step, body["messages"])
        reply.model = str(body["model"])
        reply.input_tokens = max(1, len(json.dumps(body)) // 4)
        if reply.drop and request.transport is not None and not body.get("stream"):
            request.transport.abort()
            return web.Response()  # never sent: the connection is gone
        if not body.get("stream"):
            if reply.hang:
                await self._park(request)
            payload = openai_completion(reply) if provider == "openai" else anthropic_message(reply)
            return web.json_response(payload)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        if provider == "openai":
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = openai_sse(reply, include_usage=usage)
        else:
            events = anthropic_sse(reply)
        try:
            for chunk in events:
                if chunk == PARK and reply.drop:  # a Drop step: hang up mid-answer
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if chunk == PARK:  # a Hang step: a little text is out, now wait
                    await self._park(request)
                    if request.transport is None or request.transport.is_closing():
                        return response
                    continue
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away: nothing left to say
        return response

    async def _park(self, request: web.Request) -> None:
        """Block until released or until the client disconnects."""
        release = self._release
        self.hanging += 1
        try:
            while not release.is_set():
                if request.transport is None or request.transport.is_closing():
                    return
                try:
                    await asyncio.wait_for(release.wait(), 0.05)
                except TimeoutError:
                    pass
        finally:
            self.hanging -= 1


def _call_id(provider: str) -> str:
    return ("call_" if provider == "openai" else "toolu_") + uuid.uuid4().hex[:20]


def _invalid(provider: str, body: dict[str, Any]) -> str | None:
    """What a real endpoint would reject with a 400 (the checks that catch client bugs)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: a model name is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: a non-empty list is required"
    if provider == "anthropic":
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        return check_anthropic(messages)
    return check_openai(messages)


# ------------------------------------------------------------------------ subprocess
async def _main(port: int, scripts: dict[str, list[dict[str, Any]]]) -> None:
    server = LLMServer(port=port)
    for key, steps in scripts.items():
        name, _, model = key.partition("@")
        server.add_script(name, [step_from_json(s) for s in steps], model=model or None)
    await server.start()
    print(f"LISTENING {server.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="The scripted LLM server for spokehub's tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scripts", help="JSON file: {name or name@model: [steps]}")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        scripts = json.loads(Path(args.scripts).read_text()) if args.scripts else {}
        asyncio.run(_main(args.port, scripts))


if __name__ == "__main__":
    main()
