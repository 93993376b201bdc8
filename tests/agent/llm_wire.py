"""Wire formats for the scripted LLM (:mod:`tests.llm_server`): encoders and request checks.

Shapes follow what the official SDKs parse (see ``openai/types/chat/chat_completion_chunk.py``
and ``anthropic/types/raw_message_*_event.py`` in the installed packages). The request checks
reproduce the 400s real providers return for malformed conversations (an unanswered tool call,
a tool result with no matching call, an empty text block), because a stand-in that accepted
them would hide exactly the client bugs these tests exist to catch.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PARK = b""  # marker in an SSE event list: a Hang step waits here, a Drop step hangs up


@dataclass
class ToolUse:
    id: str
    name: str
    arguments: str  # raw JSON text (possibly malformed, on purpose)


@dataclass
class Reply:
    """What the scripted model says in one turn, provider-neutral."""

    text: str = ""
    tools: list[ToolUse] = field(default_factory=list)
    hang: bool = False  # wait at PARK until released
    drop: bool = False  # cut the connection at PARK
    pieces: int = 3  # how many deltas the text is streamed in
    model: str = "scripted"
    input_tokens: int = 1

    @property
    def output_tokens(self) -> int:
        return max(1, (len(self.text) + sum(len(t.arguments) for t in self.tools)) // 4)


def pieces(text: str, n: int = 3) -> list[str]:
    """Split ``text`` into up to ``n`` non-empty pieces, so streams really arrive in parts."""
    if not text:
        return []
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)]


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


# ------------------------------------------------------------------------------- OpenAI
def openai_sse(reply: Reply, *, include_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion.chunk",
            "created": int(time.time()), "model": reply.model, "system_fingerprint": "fp_scripted"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                     "finish_reason": finish}]}
        if include_usage:
            data["usage"] = None
        return _sse(data)

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    for i, piece in enumerate(pieces(reply.text, reply.pieces)):
        out.append(chunk({"content": piece}))
        if i == 0 and reply.drop:
            out.append(PARK)
    if reply.hang:
        out.append(PARK)
    for index, tool in enumerate(reply.tools):
        out.append(chunk({"tool_calls": [{"index": index, "id": tool.id, "type": "function",
                                          "function": {"name": tool.name, "arguments": ""}}]}))
        for piece in pieces(tool.arguments):
            out.append(chunk({"tool_calls": [{"index": index,
                                              "function": {"arguments": piece}}]}))
    out.append(chunk({}, "tool_calls" if reply.tools else "stop"))
    if include_usage:
        out.append(_sse({**base, "choices": [], "usage": _openai_usage(reply)}))
    out.append(b"data: [DONE]\n\n")
    return out


def _openai_usage(reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens}


def openai_completion(reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None,
                               "refusal": None}
    if reply.tools:
        message["tool_calls"] = [{"id": t.id, "type": "function",
                                  "function": {"name": t.name, "arguments": t.arguments}}
                                 for t in reply.tools]
    return {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion",
            "created": int(time.time()), "model": reply.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if reply.tools else "stop"}],
            "usage": _openai_usage(reply)}


def check_openai(messages: list[dict[str, Any]]) -> str | None:
    pending: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role not in {"system", "developer", "user", "assistant", "tool"}:
            return f"messages[{i}].role: invalid role {role!r}"
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id not in pending:
                return (f"messages[{i}]: messages with role 'tool' must be a response to a "
                        f"preceding message with 'tool_calls' (unknown id {call_id!r})")
            pending.discard(call_id)
            continue
        if pending:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    f"responding to each 'tool_call_id'. Missing: {sorted(pending)}")
        if role == "assistant":
            for call in msg.get("tool_calls") or []:
                if not isinstance(call.get("function", {}).get("arguments"), str):
                    return f"messages[{i}].tool_calls: function.arguments must be a string"
                pending.add(call.get("id"))
            if not msg.get("tool_calls") and msg.get("content") in (None, ""):
                return f"messages[{i}]: an assistant message needs content or tool_calls"
    return None


# ---------------------------------------------------------------------------- Anthropic
def anthropic_sse(reply: Reply) -> list[bytes]:
    message: dict[str, Any] = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
               "model": reply.model, "content": [], "stop_reason": None,
               "stop_sequence": None,
               "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1}}
    out = [_sse({"type": "message_start", "message": message}, "message_start"),
           _sse({"type": "ping"}, "ping")]
    index = 0
    if reply.text:
        out.append(_sse({"type": "content_block_start", "index": index,
                         "content_block": {"type": "text", "text": ""}}, "content_block_start"))
        for i, piece in enumerate(pieces(reply.text, reply.pieces)):
            out.append(_sse({"type": "content_block_delta", "index": index,
                             "delta": {"type": "text_delta", "text": piece}},
                            "content_block_delta"))
            if i == 0 and reply.drop:
                out.append(PARK)
        if reply.hang:
            out.append(PARK)
        out.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1
    for tool in reply.tools:
        out.append(_sse({"type": "content_block_start", "index": index,
                         "content_block": {"type": "tool_use", "id": tool.id, "name": tool.name,
                                           "input": {}}}, "content_block_start"))
        for piece in pieces(tool.arguments):
            out.append(_sse({"type": "content_block_delta", "index": index,
                             "delta": {"type": "input_json_delta", "partial_json": piece}},
                            "content_block_delta"))
        out.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1
    out.append(_sse({"type": "message_delta",
                     "delta": {"stop_reason": "tool_use" if reply.tools else "end_turn",
                               "stop_sequence": None},
                     "usage": {"output_tokens": reply.output_tokens}}, "message_delta"))
    out.append(_sse({"type": "message_stop"}, "message_stop"))
    return out


def anthropic_message(reply: Reply) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for tool in reply.tools:
        try:
            parsed: Any = json.loads(tool.arguments)
        except ValueError:
            parsed = tool.arguments  # a malformed step: the SDK will see a string
        content.append({"type": "tool_use", "id": tool.id, "name": tool.name, "input": parsed})
    return {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
            "model": reply.model, "content": content,
            "stop_reason": "tool_use" if reply.tools else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}}


def check_anthropic(messages: list[dict[str, Any]]) -> str | None:
    pending: set[str] = set()
    for i, msg in enumerate(messages):
        role, content = msg.get("role"), msg.get("content")
        if role not in {"user", "assistant"}:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            return f"messages.{i}: all messages must have non-empty content"
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if pending - answered:
            return ("messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {sorted(pending - answered)}").replace("{i}", str(i))
        if answered - pending:
            return (f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {sorted(answered - pending)}")
        pending = set()
        for j, block in enumerate(blocks):
            kind = block.get("type")
            if kind == "text" and not block.get("text"):
                return f"messages.{i}.content.{j}: text content blocks must be non-empty"
            if kind == "tool_use":
                if role != "assistant" or not isinstance(block.get("input"), dict):
                    return f"messages.{i}.content.{j}: invalid tool_use block"
                pending.add(block.get("id"))
            if kind == "tool_result" and role != "user":
                return f"messages.{i}.content.{j}: tool_result blocks belong in user messages"
    return None


def wire_error(provider: str, status: int, message: str) -> web.Response:
    """An error response in the provider's own shape (what the SDKs turn into APIStatusError)."""
    if provider == "openai":
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return web.json_response({"error": {"message": message, "type": kind, "param": None,
                                            "code": None}}, status=status)
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
    request_id = "req_" + uuid.uuid4().hex[:24]
    return web.json_response({"type": "error", "error": {"type": kind, "message": message},
                              "request_id": request_id},
                             status=status, headers={"request-id": request_id})
