"""The Anthropic client (the Messages API, or the hub's relay) via ``AsyncAnthropic``.

Streams raw message events; a ``tool_use`` block's input arrives as ``input_json_delta``
fragments and is parsed once its block stops. The raw events are used rather than the SDK's
``messages.stream()`` helper because that helper parses partial JSON as it goes, and a
malformed answer must surface as our own clear :class:`ModelError`.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

from spoke.agent.llm import (
    STOP_REASONS,
    ModelClient,
    ModelError,
    ModelSpec,
    OnText,
    ToolCall,
    TurnResult,
    normalize,
    parse_arguments,
    ssl_context,
    status_error,
)

TIMEOUT = httpx2.Timeout(600.0, connect=10.0)
MAX_TOKENS = 8192


def to_anthropic(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The neutral transcript as Messages-API messages.

    Tool results become ``tool_result`` blocks in a user message; consecutive messages of one
    role are merged (tool results then a new user message, or a user message after a failed
    turn), and tool results are kept first in their message, as the API requires.
    """
    out: list[dict[str, Any]] = []
    for msg in normalize(messages):
        role = msg["role"]
        blocks: list[dict[str, Any]]
        if role == "user":
            wire_role, blocks = "user", [{"type": "text", "text": msg["text"] or "(empty)"}]
        elif role == "assistant":
            wire_role = "assistant"
            blocks = [{"type": "text", "text": msg["text"]}] if msg.get("text") else []
            blocks += [{"type": "tool_use", "id": c["id"], "name": c["name"],
                        "input": c["arguments"]} for c in msg.get("tool_calls") or []]
            if not blocks:
                blocks = [{"type": "text", "text": "(empty response)"}]
        else:
            wire_role = "user"
            blocks = [{"type": "tool_result", "tool_use_id": r["call_id"],
                       "content": r["output"] or "(no output)", "is_error": bool(r.get("is_error"))}
                      for r in msg["results"]]
        if out and out[-1]["role"] == wire_role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": wire_role, "content": blocks})
    return out


def tools_to_anthropic(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
            for t in tools]


class AnthropicClient(ModelClient):
    def __init__(self, spec: ModelSpec, *, max_retries: int = 1,
                 max_tokens: int = MAX_TOKENS) -> None:
        self.spec = spec
        self.alias = spec.alias
        self.max_tokens = max_tokens
        http_client = None
        if spec.ca_file:
            http_client = anthropic.DefaultAsyncHttpxClient(verify=ssl_context(spec.ca_file),
                                                            timeout=TIMEOUT)
        self._client = anthropic.AsyncAnthropic(api_key=spec.api_key or "none",
                                                base_url=spec.base_url or None,
                                                max_retries=max_retries, timeout=TIMEOUT,
                                                http_client=http_client)

    async def aclose(self) -> None:
        await self._client.close()

    async def turn(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                   on_text: OnText) -> TurnResult:
        alias = self.spec.alias
        kwargs: dict[str, Any] = {"model": self.spec.model, "max_tokens": self.max_tokens,
                                  "messages": to_anthropic(messages), "stream": True}
        if system:
            kwargs["system"] = system
        if tools:
            kwargs["tools"] = tools_to_anthropic(tools)
        text: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        stop_reason = "end_turn"
        input_tokens = output_tokens = 0
        try:
            stream = await self._client.messages.create(**kwargs)
            async with stream:
                async for event in stream:
                    if event.type == "message_start":
                        usage = event.message.usage
                        input_tokens = (usage.input_tokens + (usage.cache_read_input_tokens or 0)
                                        + (usage.cache_creation_input_tokens or 0))
                        output_tokens = usage.output_tokens
                    elif event.type == "content_block_start":
                        block = event.content_block
                        blocks[event.index] = {"type": block.type, "parts": [],
                                               "id": getattr(block, "id", ""),
                                               "name": getattr(block, "name", ""),
                                               "input": getattr(block, "input", None)}
                        if block.type == "text" and getattr(block, "text", ""):
                            text.append(block.text)
                            await on_text(block.text)
                    elif event.type == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta":
                            text.append(delta.text)
                            await on_text(delta.text)
                        elif delta.type == "input_json_delta" and event.index in blocks:
                            blocks[event.index]["parts"].append(delta.partial_json)
                    elif event.type == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        output_tokens = event.usage.output_tokens or output_tokens
                        if event.usage.input_tokens:
                            input_tokens = event.usage.input_tokens
        except anthropic.APIStatusError as err:
            raise status_error(alias, err.status_code, err.body, err.message) from err
        except anthropic.APIConnectionError as err:  # includes timeouts
            raise ModelError(f"{alias}: cannot reach {self.spec.base_url or 'the API'}: {err}",
                             retryable=True) from err
        except httpx2.TransportError as err:  # the SDK lets mid-stream failures through raw
            raise ModelError(f"{alias}: the connection to {self.spec.base_url or 'the API'} "
                             f"broke mid-answer: {err}", retryable=True) from err
        except anthropic.APIError as err:
            raise ModelError(f"{alias}: {err.message}", retryable=False) from err
        tool_calls = []
        for index in sorted(blocks):
            block = blocks[index]
            if block["type"] != "tool_use":
                continue
            raw = "".join(block["parts"])
            if not block["parts"] and isinstance(block["input"], dict):
                arguments = block["input"]  # a proxy that sent the input whole
            else:
                arguments = parse_arguments(alias, block["name"], raw)
            tool_calls.append(ToolCall(id=block["id"], name=block["name"], arguments=arguments))
        return TurnResult(text="".join(text), tool_calls=tool_calls, input_tokens=input_tokens,
                          output_tokens=output_tokens, model_alias=alias,
                          stop_reason=STOP_REASONS.get(stop_reason, stop_reason))
