"""The OpenAI-compatible client (OpenAI, vLLM, llama.cpp, the hub's relay) via ``AsyncOpenAI``.

Streams chat completions; tool calls arrive as fragments keyed by ``index`` (id and name in
the first fragment, arguments split across the rest) and are assembled here.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai

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


def to_openai(system: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The neutral transcript as chat-completions messages."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for msg in normalize(messages):
        role = msg["role"]
        if role == "user":
            out.append({"role": "user", "content": msg["text"]})
        elif role == "assistant":
            wire: dict[str, Any] = {"role": "assistant", "content": msg.get("text") or None}
            calls = msg.get("tool_calls") or []
            if calls:
                wire["tool_calls"] = [{"id": c["id"], "type": "function",
                                       "function": {"name": c["name"],
                                                    "arguments": json.dumps(c["arguments"])}}
                                      for c in calls]
            elif wire["content"] is None:
                wire["content"] = "(empty response)"
            out.append(wire)
        elif role == "tool":
            for r in msg["results"]:
                # No is_error field on this wire: say it in the content instead.
                content = ("ERROR: " + r["output"]) if r.get("is_error") else r["output"]
                out.append({"role": "tool", "tool_call_id": r["call_id"], "content": content})
    return out


def tools_to_openai(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                              "parameters": t["parameters"]}} for t in tools]


class OpenAIClient(ModelClient):
    def __init__(self, spec: ModelSpec, *, max_retries: int = 1) -> None:
        self.spec = spec
        self.alias = spec.alias
        http_client = None
        if spec.ca_file:
            http_client = openai.DefaultAsyncHttpxClient(verify=ssl_context(spec.ca_file),
                                                         timeout=TIMEOUT)
        self._client = openai.AsyncOpenAI(api_key=spec.api_key or "none",
                                          base_url=spec.base_url or None,
                                          max_retries=max_retries, timeout=TIMEOUT,
                                          http_client=http_client)

    async def aclose(self) -> None:
        await self._client.close()

    async def turn(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                   on_text: OnText) -> TurnResult:
        alias = self.spec.alias
        kwargs: dict[str, Any] = {"model": self.spec.model, "messages": to_openai(system, messages),
                                  "stream": True, "stream_options": {"include_usage": True}}
        if tools:
            kwargs["tools"] = tools_to_openai(tools)
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish = "stop"
        input_tokens = output_tokens = 0
        try:
            stream = await self._client.chat.completions.create(**kwargs)
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        input_tokens = chunk.usage.prompt_tokens or 0
                        output_tokens = chunk.usage.completion_tokens or 0
                    for choice in chunk.choices:
                        delta = choice.delta
                        if delta.content:
                            text.append(delta.content)
                            await on_text(delta.content)
                        for frag in delta.tool_calls or []:
                            call = calls.setdefault(frag.index, {"id": "", "name": "", "args": []})
                            if frag.id:
                                call["id"] = frag.id
                            if frag.function is not None:
                                if frag.function.name:
                                    call["name"] += frag.function.name
                                if frag.function.arguments:
                                    call["args"].append(frag.function.arguments)
                        if choice.finish_reason:
                            finish = choice.finish_reason
        except openai.APIStatusError as err:
            raise status_error(alias, err.status_code, err.body, err.message) from err
        except openai.APIConnectionError as err:  # includes timeouts
            raise ModelError(f"{alias}: cannot reach {self.spec.base_url or 'the API'}: {err}",
                             retryable=True) from err
        except httpx2.TransportError as err:  # the SDK lets mid-stream failures through raw
            raise ModelError(f"{alias}: the connection to {self.spec.base_url or 'the API'} "
                             f"broke mid-answer: {err}", retryable=True) from err
        except openai.APIError as err:  # e.g. an error event in the middle of the stream
            raise ModelError(f"{alias}: {err.message}", retryable=False) from err
        tool_calls = [ToolCall(id=c["id"] or f"call_{alias}_{i}", name=c["name"],
                               arguments=parse_arguments(alias, c["name"], "".join(c["args"])))
                      for i, c in sorted(calls.items())]
        return TurnResult(text="".join(text), tool_calls=tool_calls, input_tokens=input_tokens,
                          output_tokens=output_tokens, model_alias=alias,
                          stop_reason=STOP_REASONS.get(finish, finish))
