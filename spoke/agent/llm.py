"""Model clients: one provider-neutral interface over the official ``openai``/``anthropic`` SDKs.

The loop never sees a provider's wire format. It keeps the conversation in the *neutral
transcript* below (plain JSON, so the hub can persist it and another spoke can resume it), and
each client converts it to its own wire format on every call:

``{"role": "user", "text": str}``
    A user message.
``{"role": "assistant", "text": str, "tool_calls": [{"id", "name", "arguments": dict}]}``
    One model turn: its text (may be empty) and the tools it called (may be empty).
``{"role": "tool", "results": [{"call_id", "name", "output": str, "is_error": bool}]}``
    The results of one turn's tool calls, all in one message (Anthropic wants them together
    in one user message; OpenAI gets one ``tool`` message each).

Tools are described neutrally as ``{"name", "description", "parameters": JSON schema}``.

Errors are reduced to :class:`ModelError` with a ``retryable`` flag, so :class:`FallbackClient`
can decide to try the next alias without knowing which SDK raised what.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

OnText = Callable[[str], Awaitable[None]]
INTERRUPTED = "(no result: the tool call was interrupted)"
# HTTP statuses worth trying elsewhere: timeouts, conflicts, rate limits, server trouble.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class ModelSpec:
    """One model alias as a spoke reaches it (directly, or through the hub's relay)."""

    alias: str
    provider: Literal["openai", "anthropic"]
    base_url: str
    api_key: str
    model: str
    context_window: int = 128_000
    # PEM to trust exactly (the hub's self-signed certificate); the hostname is not checked
    # because trust comes from this file, not from a name a CA vouched for.
    ca_file: str | None = None


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class TurnResult:
    """One model turn. ``stop_reason`` is neutral: "end", "tool_calls", "max_tokens" or the
    provider's own word for anything else."""

    text: str
    tool_calls: list[ToolCall]
    input_tokens: int
    output_tokens: int
    model_alias: str
    stop_reason: str


class ModelError(Exception):
    """A model call failed. ``retryable``: another attempt (or another model) may succeed."""

    def __init__(self, message: str, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status


class ModelClient(Protocol):
    async def turn(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                   on_text: OnText) -> TurnResult:
        """Run one model turn over the neutral transcript, streaming text through ``on_text``."""
        ...


def make_client(spec: ModelSpec, *, max_retries: int = 1) -> ModelClient:
    """The streaming client for ``spec.provider``.

    ``max_retries`` is the SDK's own retry count; it is low on purpose, because a fallback
    alias is usually a better use of the time than a third attempt at a sick endpoint.
    """
    if spec.provider == "openai":
        from spoke.agent.openai_client import OpenAIClient

        return OpenAIClient(spec, max_retries=max_retries)
    if spec.provider == "anthropic":
        from spoke.agent.anthropic_client import AnthropicClient

        return AnthropicClient(spec, max_retries=max_retries)
    raise ValueError(f"unknown model provider {spec.provider!r} (expected openai or anthropic)")


class FallbackClient(ModelClient):
    """Try each client in order until one answers.

    The next client is tried only when the failure is retryable (connection refused, timeout,
    429, 5xx) *and* no text has been streamed yet: once the user has seen part of an answer,
    switching models would splice two different answers together.
    """

    def __init__(self, clients: list[ModelClient]) -> None:
        if not clients:
            raise ValueError("FallbackClient needs at least one client")
        self.clients = list(clients)

    async def turn(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                   on_text: OnText) -> TurnResult:
        reasons: list[str] = []
        for client in self.clients:
            streamed = False

            async def tracked(text: str) -> None:
                nonlocal streamed
                streamed = True
                await on_text(text)

            try:
                return await client.turn(system, messages, tools, tracked)
            except ModelError as err:
                reasons.append(err.message)
                if streamed or not err.retryable:
                    raise ModelError("; ".join(reasons), retryable=err.retryable,
                                     status=err.status) from err
        raise ModelError(f"all {len(self.clients)} models failed: " + "; ".join(reasons),
                         retryable=True)

    async def aclose(self) -> None:
        for client in self.clients:
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()


# ------------------------------------------------------------------ shared by the clients
def ssl_context(ca_file: str) -> ssl.SSLContext:
    """Trust exactly the certificate(s) in ``ca_file``; skip the hostname check (see ModelSpec)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = False
    return ctx


def parse_arguments(alias: str, name: str, raw: str) -> dict[str, Any]:
    """Tool-call arguments as a dict, or a non-retryable :class:`ModelError`.

    Not retryable: the same model asked the same way tends to repeat itself, and guessing at
    what it meant would run a tool with arguments nobody chose.
    """
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise ModelError(f"{alias}: model returned malformed tool arguments for {name!r} "
                         f"(not JSON: {err}): {raw[:200]!r}", retryable=False) from err
    if not isinstance(value, dict):
        raise ModelError(f"{alias}: model returned malformed tool arguments for {name!r} "
                         f"(a JSON {type(value).__name__}, not an object): {raw[:200]!r}",
                         retryable=False)
    return value


def status_error(alias: str, status: int, body: object, fallback: str) -> ModelError:
    """A ModelError for an HTTP error status, with the provider's own message when present."""
    message = fallback
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
        elif isinstance(body.get("message"), str):
            message = body["message"]
    retryable = status in RETRYABLE_STATUS or status >= 500
    return ModelError(f"{alias}: HTTP {status}: {message}", retryable=retryable, status=status)


def normalize(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A transcript every provider accepts: each tool call answered right after its turn.

    A cancelled turn can leave calls without results; both providers reject that with a 400,
    which would wedge the workstream forever, so missing results are filled in here.
    """
    out: list[dict[str, Any]] = []
    expected: list[dict[str, Any]] = []  # calls of the last assistant turn still unanswered

    def close_turn(results: list[dict[str, Any]]) -> None:
        by_id = {r.get("call_id"): r for r in results}
        if expected:
            out.append({"role": "tool", "results": [
                by_id.get(c["id"]) or {"call_id": c["id"], "name": c["name"],
                                       "output": INTERRUPTED, "is_error": True}
                for c in expected]})

    for msg in messages:
        role = msg.get("role")
        if role == "tool":
            close_turn(list(msg.get("results") or []))
            expected = []
            continue
        close_turn([])
        expected = []
        if role == "assistant":
            expected = list(msg.get("tool_calls") or [])
        out.append(msg)
    close_turn([])
    return out


STOP_REASONS = {"stop": "end", "end_turn": "end", "stop_sequence": "end",
                "tool_calls": "tool_calls", "function_call": "tool_calls", "tool_use": "tool_calls",
                "length": "max_tokens", "max_tokens": "max_tokens"}
