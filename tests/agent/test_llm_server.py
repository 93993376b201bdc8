"""The scripted LLM server, driven directly through the official SDKs."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, cast

import anthropic
import openai
import pytest

from tests.agent.helpers import until
from tests.llm_server import Call, Calls, Echo, Fail, Hang, LLMServer, Malformed, Say, write_scripts

ROOT = Path(__file__).resolve().parents[2]


def oai(server: LLMServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.openai_url, api_key="k-openai", max_retries=0)


def ant(server: LLMServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=server.url, api_key="k-anthropic", max_retries=0)


async def test_openai_stream_text_tool_calls_and_usage(llm_server: LLMServer) -> None:
    llm_server.add_script("s", [Calls([Call("bash", {"command": "ls"}, call_id="c1"),
                                       Call("read_file", {"path": "a"})], text="Looking.")])
    stream = await oai(llm_server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "[script:s] go"}], stream=True,
        stream_options={"include_usage": True})
    texts, args, names, finish, usage = [], {0: "", 1: ""}, {}, None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.content:
                texts.append(choice.delta.content)
            for tc in choice.delta.tool_calls or []:
                if tc.function and tc.function.name:
                    names[tc.index] = (tc.id, tc.function.name)
                args[tc.index] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    assert "".join(texts) == "Looking." and len(texts) > 1  # really streamed in pieces
    assert names[0] == ("c1", "bash") and names[1][1] == "read_file"
    assert json.loads(args[0]) == {"command": "ls"} and json.loads(args[1]) == {"path": "a"}
    assert finish == "tool_calls" and usage is not None and usage.total_tokens > 0
    rec = llm_server.requests[-1]
    assert (rec.path, rec.model, rec.auth) == ("/v1/chat/completions", "m", "Bearer k-openai")


async def test_openai_non_stream(llm_server: LLMServer) -> None:
    llm_server.add_script("s", [Call("bash", {"command": "x"}), Say("hello")])
    client = oai(llm_server)
    first = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "[script:s]"}])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "bash" and first.choices[0].finish_reason == "tool_calls"  # type: ignore[union-attr]
    second = await client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": "[script:s]"},
        {"role": "assistant", "content": None, "tool_calls": [cast(Any, call.model_dump())]},
        {"role": "tool", "tool_call_id": call.id, "content": "ok"}])
    assert second.choices[0].message.content == "hello"


async def test_anthropic_stream_and_non_stream(llm_server: LLMServer) -> None:
    llm_server.add_script("s", [Calls([Call("bash", {"command": "ls"})], text="Hi.")])
    client = ant(llm_server)
    stream = await client.messages.create(model="c", max_tokens=50, stream=True,
                                          messages=[{"role": "user", "content": "[script:s]"}])
    kinds, partial = [], ""
    async for event in stream:
        kinds.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            partial += event.delta.partial_json
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert json.loads(partial) == {"command": "ls"}
    message = await client.messages.create(model="c", max_tokens=50,
                                           messages=[{"role": "user", "content": "[script:s]"}])
    assert message.stop_reason == "tool_use" and message.content[1].type == "tool_use"
    assert llm_server.requests[-1].auth == "Bearer k-anthropic"


async def test_past_the_end_says_done_and_echo(llm_server: LLMServer) -> None:
    llm_server.add_script("e", [Echo("got: {last_tool_result}")])
    client = oai(llm_server)
    done = await client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": "[script:e]"}, {"role": "assistant", "content": "x"},
        {"role": "user", "content": "more"}])
    assert done.choices[0].message.content == "done"
    echo = await client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": "[script:e]"}])
    assert echo.choices[0].message.content == "got: "
    msg = await ant(llm_server).messages.create(model="c", max_tokens=9, messages=[
        {"role": "user", "content": "[script:x]"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "b",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "42"}]}])
    assert msg.content[0].text == "done"  # type: ignore[union-attr]


async def test_fail_model_specific_scripts_and_bad_conversations(llm_server: LLMServer) -> None:
    llm_server.add_script("f", [Fail(503, "overloaded")], model="primary")
    llm_server.add_script("f", [Say("fine")])
    client = oai(llm_server)
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(model="primary", messages=[
            {"role": "user", "content": "[script:f]"}])
    assert err.value.status_code == 503 and "overloaded" in str(err.value)
    ok = await client.chat.completions.create(model="backup", messages=[
        {"role": "user", "content": "[script:f]"}])
    assert ok.choices[0].message.content == "fine"
    with pytest.raises(openai.BadRequestError, match="tool_call"):  # unanswered tool call
        await client.chat.completions.create(model="m", messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "b", "arguments": "{}"}}]},
            {"role": "user", "content": "y"}])
    with pytest.raises(anthropic.BadRequestError, match="tool_result"):
        await ant(llm_server).messages.create(model="c", max_tokens=5, messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "b",
                                               "input": {}}]},
            {"role": "user", "content": "y"}])


async def test_malformed_and_hang_release(llm_server: LLMServer) -> None:
    llm_server.add_script("m", [Malformed()])
    llm_server.add_script("h", [Hang("wait")])
    bad = await oai(llm_server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "[script:m]"}])
    raw = bad.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index,union-attr]
    with pytest.raises(ValueError):
        json.loads(raw)

    async def consume() -> str:
        stream = await oai(llm_server).chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "[script:h]"}])
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    task = asyncio.create_task(consume())
    await llm_server.wait_requests(2)
    await until(lambda: llm_server.hanging > 0, 5, "the model to hang")
    await asyncio.sleep(0.2)
    assert not task.done()
    llm_server.release()
    assert await asyncio.wait_for(task, 5) == "wait"


async def test_subprocess_mode(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts.json"
    write_scripts(scripts, {"hello": [Say("hi from a process")],
                            "hello@broken": [Fail(500, "nope")]})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.llm_server", "--port", "0", "--scripts", str(scripts),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("LISTENING "), line
        port = int(line.split()[1])
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k",
                                    max_retries=0)
        answer = await client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "[script:hello] hi"}])
        assert answer.choices[0].message.content == "hi from a process"
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="broken", messages=[{"role": "user", "content": "[script:hello] hi"}])
        await client.close()
    finally:
        proc.terminate()
        await proc.wait()
