"""Model clients through the official SDKs against the scripted server; fallback; TLS."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from spoke.agent.anthropic_client import to_anthropic
from spoke.agent.llm import FallbackClient, ModelError, ModelSpec, make_client, normalize
from spoke.agent.openai_client import to_openai
from spoke.agent.tools import TOOLS
from tests.agent.helpers import PROVIDERS, Provider, client_for, spec_for
from tests.llm_server import Call, Calls, Drop, Fail, LLMServer, Malformed, Say

HISTORY: list[dict[str, Any]] = [
    {"role": "user", "text": "[script:t] hello"},
    {"role": "assistant", "text": "", "tool_calls": [
        {"id": "c1", "name": "bash", "arguments": {"command": "ls"}},
        {"id": "c2", "name": "list_dir", "arguments": {}}]},
    {"role": "tool", "results": [
        {"call_id": "c1", "name": "bash", "output": "a b", "is_error": False},
        {"call_id": "c2", "name": "list_dir", "output": "boom", "is_error": True}]},
    {"role": "assistant", "text": "ok", "tool_calls": []},
    {"role": "user", "text": "again"},
]


class Texts:
    def __init__(self) -> None:
        self.parts: list[str] = []

    async def __call__(self, text: str) -> None:
        self.parts.append(text)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streams_text_and_assembles_tool_calls(llm_server: LLMServer,
                                                     provider: Provider) -> None:
    llm_server.add_script("t", [Calls([Call("bash", {"command": "echo hi"}, call_id="x1"),
                                       Call("read_file", {"path": "f.txt"}, call_id="x2")],
                                      text="Let me look."), Say("All good.")])
    client = client_for(llm_server, provider)
    texts = Texts()
    first = await client.turn("sys", [{"role": "user", "text": "[script:t] hi"}], TOOLS, texts)
    assert first.text == "Let me look." and len(texts.parts) > 1
    assert [(c.id, c.name, c.arguments) for c in first.tool_calls] == [
        ("x1", "bash", {"command": "echo hi"}), ("x2", "read_file", {"path": "f.txt"})]
    assert first.stop_reason == "tool_calls" and first.model_alias == "main"
    assert first.input_tokens > 0 and first.output_tokens > 0
    second = await client.turn("sys", HISTORY, TOOLS, texts)  # the wire check accepts it
    assert second.text == "done" and second.stop_reason == "end" and not second.tool_calls
    body = llm_server.requests[-1].body
    if provider == "openai":
        assert body["messages"][0] == {"role": "system", "content": "sys"}
        assert body["stream_options"] == {"include_usage": True}
        assert {t["function"]["name"] for t in body["tools"]} == {t["name"] for t in TOOLS}
    else:
        assert body["system"] == "sys" and body["max_tokens"] > 0
        assert {t["name"] for t in body["tools"]} == {t["name"] for t in TOOLS}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_arguments_are_a_model_error(llm_server: LLMServer,
                                                     provider: Provider) -> None:
    llm_server.add_script("m", [Malformed()])
    with pytest.raises(ModelError, match="malformed tool arguments") as err:
        await client_for(llm_server, provider).turn(
            "", [{"role": "user", "text": "[script:m]"}], TOOLS, Texts())
    assert not err.value.retryable


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_fallback_on_500(llm_server: LLMServer, provider: Provider) -> None:
    llm_server.add_script("f", [Fail(500, "primary is sick")], model="primary-model")
    llm_server.add_script("f", [Say("from the backup")])
    client = FallbackClient([
        client_for(llm_server, provider, alias="primary", model="primary-model"),
        client_for(llm_server, "anthropic" if provider == "openai" else "openai",
                   alias="backup", model="backup-model")])
    result = await client.turn("", [{"role": "user", "text": "[script:f]"}], TOOLS, Texts())
    assert result.text == "from the backup" and result.model_alias == "backup"
    assert [r.model for r in llm_server.requests] == ["primary-model", "backup-model"]


async def test_fallback_when_unreachable_and_when_all_fail(llm_server: LLMServer) -> None:
    dead = ModelSpec(alias="dead", provider="openai", base_url="http://127.0.0.1:9/v1",
                     api_key="k", model="m")
    llm_server.add_script("u", [Say("alive")])
    client = FallbackClient([make_client(dead, max_retries=0),
                             client_for(llm_server, "anthropic", alias="live")])
    result = await client.turn("", [{"role": "user", "text": "[script:u]"}], TOOLS, Texts())
    assert (result.text, result.model_alias) == ("alive", "live")

    llm_server.add_script("x", [Fail(502, "bad gateway")])
    both = FallbackClient([make_client(dead, max_retries=0), client_for(llm_server, "openai")])
    with pytest.raises(ModelError) as err:
        await both.turn("", [{"role": "user", "text": "[script:x]"}], TOOLS, Texts())
    assert "dead: cannot reach" in err.value.message and "HTTP 502: bad gateway" in err.value.message


async def test_no_fallback_for_non_retryable_errors(llm_server: LLMServer) -> None:
    llm_server.add_script("n", [Fail(400, "you sent nonsense")])
    client = FallbackClient([client_for(llm_server, "openai", alias="a"),
                             client_for(llm_server, "openai", alias="b")])
    with pytest.raises(ModelError, match="HTTP 400: you sent nonsense") as err:
        await client.turn("", [{"role": "user", "text": "[script:n]"}], TOOLS, Texts())
    assert not err.value.retryable and len(llm_server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tls_with_a_pinned_self_signed_certificate(tmp_path: Path,
                                                         provider: Provider) -> None:
    from hub.tls import ensure_self_signed

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed(cert, key, ["hub.example"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = await LLMServer(ssl_context=ctx).start()
    try:
        server.add_script("tls", [Say("secure")])
        spec = spec_for(server, provider, ca_file=str(cert))
        assert spec.base_url.startswith("https://")
        result = await make_client(spec, max_retries=0).turn(
            "", [{"role": "user", "text": "[script:tls]"}], [], Texts())
        assert result.text == "secure"
        untrusted = spec_for(server, provider)  # the system CAs do not know this certificate
        with pytest.raises(ModelError, match="cannot reach"):
            await make_client(untrusted, max_retries=0).turn(
                "", [{"role": "user", "text": "[script:tls]"}], [], Texts())
    finally:
        await server.stop()


def test_normalize_answers_interrupted_calls() -> None:
    history: list[dict[str, Any]] = [{"role": "user", "text": "a"},
               {"role": "assistant", "text": "", "tool_calls": [
                   {"id": "c1", "name": "bash", "arguments": {}}]},
               {"role": "user", "text": "b"}]
    fixed = normalize(history)
    assert [m["role"] for m in fixed] == ["user", "assistant", "tool", "user"]
    assert fixed[2]["results"][0]["call_id"] == "c1" and fixed[2]["results"][0]["is_error"]


def test_wire_conversions() -> None:
    wire = to_openai("sys", HISTORY)
    assert [m["role"] for m in wire] == ["system", "user", "assistant", "tool", "tool",
                                         "assistant", "user"]
    assert wire[2]["tool_calls"][0]["function"]["arguments"] == '{"command": "ls"}'
    assert wire[4]["content"].startswith("ERROR: ")
    anth = to_anthropic(HISTORY + [{"role": "user", "text": "twice"}])
    assert [m["role"] for m in anth] == ["user", "assistant", "user", "assistant", "user"]
    assert anth[2]["content"][1] == {"type": "tool_result", "tool_use_id": "c2",
                                     "content": "boom", "is_error": True}
    assert [b["text"] for b in anth[4]["content"]] == ["again", "twice"]  # merged


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_dropped_stream_is_retryable_but_not_retried_after_text(
        llm_server: LLMServer, provider: Provider) -> None:
    llm_server.add_script("d", [Drop("half an answer")], model="flaky")
    llm_server.add_script("d", [Say("whole answer")])
    texts = Texts()
    with pytest.raises(ModelError) as err:
        await client_for(llm_server, provider, model="flaky").turn(
            "", [{"role": "user", "text": "[script:d]"}], [], texts)
    assert err.value.retryable and texts.parts  # some text got out before the cut
    client = FallbackClient([client_for(llm_server, provider, alias="a", model="flaky"),
                             client_for(llm_server, provider, alias="b", model="steady")])
    with pytest.raises(ModelError):  # the user saw half an answer: no splicing another on
        await client.turn("", [{"role": "user", "text": "[script:d]"}], [], Texts())
    assert [r.model for r in llm_server.requests][-1] == "flaky"
