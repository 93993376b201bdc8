"""The agent loop end to end: real SDK clients → scripted server; tools → fake box."""

from __future__ import annotations

import asyncio

import pytest

from spoke.agent.llm import FallbackClient, ModelError, ToolCall
from spoke.agent.tools import BoxSandbox
from tests.agent.helpers import (
    PROVIDERS,
    Provider,
    Recorder,
    box_path,
    client_for,
    make_loop,
    process_exists,
    read_pid,
    until,
)
from tests.llm_server import Call, Calls, Drop, Echo, Fail, Hang, LLMServer, Malformed, Say, Step

MULTI_STEP: list[Step] = [Call("write_file", {"path": "hello.py", "content": "print(6 * 7)\n"}),
              Call("bash", {"command": "python3 hello.py"}),
              Echo("the output was: {last_tool_result}")]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_multi_step_task(llm_server: LLMServer, sandbox: BoxSandbox,
                               provider: Provider) -> None:
    llm_server.add_script("multi", MULTI_STEP)
    rec = Recorder()
    loop = make_loop(client_for(llm_server, provider), sandbox, rec, auto_approve=True)
    answer = await loop.handle_message("[script:multi] write and run hello.py")
    assert answer == "the output was: 42\n[exit code 0]"
    assert box_path(sandbox, "/workspace/hello.py").read_text() == "print(6 * 7)\n"
    assert rec.kinds()[:2] == ["user_message", "state"]
    assert [k for k in rec.kinds() if k != "text_delta"] == [
        "user_message", "state",
        "usage", "tool_call", "state", "tool_result", "state",
        "usage", "tool_call", "state", "tool_result", "state",
        "assistant_message", "usage", "state"]
    assert rec.states() == ["thinking", "running", "thinking", "running", "thinking", "idle"]
    assert [c["approval"] for c in rec.of("tool_call")] == ["auto", "auto"]
    assert "".join(d["text"] for d in rec.of("text_delta")) == answer
    assert rec.of("assistant_message") == [{"text": answer}]
    assert all(u["model"] == "main" and u["input_tokens"] > 0 for u in rec.of("usage"))
    assert [m["role"] for m in loop.history] == ["user", "assistant", "tool", "assistant",
                                                 "tool", "assistant"]
    assert len(llm_server.requests) == 3
    assert llm_server.requests[0].auth in ("Bearer sk-test-main", "sk-test-main")


async def test_streaming_text_is_coalesced(llm_server: LLMServer, sandbox: BoxSandbox) -> None:
    text = "".join(f"word{i} " for i in range(600))  # ~5 KB in 600 tiny deltas
    llm_server.add_script("chatty", [Say(text, pieces=600)])
    rec = Recorder()
    answer = await make_loop(client_for(llm_server, "openai"), sandbox, rec).handle_message(
        "[script:chatty]")
    deltas = rec.of("text_delta")
    assert answer == text and "".join(d["text"] for d in deltas) == text
    assert 1 < len(deltas) <= 8, len(deltas)
    assert all(len(d["text"].encode()) <= 2048 + 16 for d in deltas)
    # flushed before what follows: all deltas precede the assistant message
    kinds = rec.kinds()
    assert max(i for i, k in enumerate(kinds) if k == "text_delta") < kinds.index("assistant_message")


async def test_a_stalled_stream_still_flushes_text(llm_server: LLMServer,
                                                   sandbox: BoxSandbox) -> None:
    llm_server.add_script("stall", [Hang("one two three four")])
    rec = Recorder()
    task = asyncio.create_task(make_loop(client_for(llm_server, "anthropic"), sandbox,
                                         rec).handle_message("[script:stall]"))
    await rec.wait_for(lambda: "".join(d["text"] for d in rec.of("text_delta"))
                       == "one two three four")
    assert llm_server.hanging == 1 and not task.done()  # the timer flushed, not the end
    llm_server.release()
    assert await asyncio.wait_for(task, 10) == "one two three four"


async def test_parallel_tool_calls_run_concurrently(llm_server: LLMServer,
                                                    sandbox: BoxSandbox) -> None:
    def meet(mine: str, other: str) -> str:  # succeeds only if the other call runs meanwhile
        return (f"touch /workspace/{mine}; for i in $(seq 100); do "
                f"[ -e /workspace/{other} ] && echo met {mine} && exit 0; sleep 0.05; done; exit 1")

    llm_server.add_script("par", [Calls([Call("bash", {"command": meet("A", "B")}, "ca"),
                                         Call("bash", {"command": meet("B", "A")}, "cb"),
                                         Call("list_dir", {}, "cc")], text="Both at once."),
                                  Echo("{last_tool_result}")])
    rec = Recorder()
    loop = make_loop(client_for(llm_server, "anthropic"), sandbox, rec, auto_approve=True)
    answer = await loop.handle_message("[script:par]")
    assert "met A" in answer and "met B" in answer
    results = loop.history[2]["results"]
    assert [r["call_id"] for r in results] == ["ca", "cb", "cc"]  # the model's order
    assert not any(r["is_error"] for r in results)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_ask_then_approve_and_deny(llm_server: LLMServer, sandbox: BoxSandbox,
                                         provider: Provider) -> None:
    llm_server.add_script("ask", [Calls([Call("read_file", {"path": "nope"}, "r1"),
                                         Call("bash", {"command": "echo yes"}, "b1"),
                                         Call("bash", {"command": "rm -rf /"}, "b2")]),
                                  Say("ok")])
    asked: list[ToolCall] = []
    answers: dict[str, asyncio.Future[tuple[bool, str]]] = {}

    async def ask(call: ToolCall) -> tuple[bool, str]:
        asked.append(call)
        answers[call.id] = asyncio.get_running_loop().create_future()
        return await answers[call.id]

    rec = Recorder()
    loop = make_loop(client_for(llm_server, provider), sandbox, rec, ask=ask)
    task = asyncio.create_task(loop.handle_message("[script:ask]"))
    await rec.wait_for(lambda: len(answers) == 2)  # both asked at once
    assert rec.states()[-1] == "attention"
    assert [c["approval"] for c in rec.of("tool_call")] == ["auto", "ask", "ask"]
    assert [a["call_id"] for a in rec.of("approval_requested")] == ["b1", "b2"]
    answers["b2"].set_result((False, "not on my machine"))
    answers["b1"].set_result((True, "fine"))
    assert await asyncio.wait_for(task, 10) == "ok"
    assert {(r["call_id"], r["approved"], r["reason"]) for r in rec.of("approval_resolved")} == {
        ("b1", True, "fine"), ("b2", False, "not on my machine")}
    by_id = {r["call_id"]: r for r in rec.of("tool_result")}
    assert by_id["b1"]["output"] == "yes\n[exit code 0]" and not by_id["b1"]["is_error"]
    assert by_id["b2"] == {"call_id": "b2", "tool": "bash", "is_error": True,
                           "output": "denied by the operator: not on my machine"}
    assert by_id["r1"]["is_error"]  # auto-run, failed: no such file
    sent = str(llm_server.requests[-1].body["messages"])  # the denial reached the model
    assert "denied by the operator: not on my machine" in sent


async def test_malformed_tool_arguments_put_the_loop_in_error(llm_server: LLMServer,
                                                              sandbox: BoxSandbox) -> None:
    llm_server.add_script("bad", [Malformed()])
    rec = Recorder()
    loop = make_loop(client_for(llm_server, "openai"), sandbox, rec, auto_approve=True)
    with pytest.raises(ModelError, match="malformed tool arguments"):
        await loop.handle_message("[script:bad]")
    assert "malformed tool arguments" in rec.of("error")[0]["message"]
    assert rec.states()[-1] == "error" and rec.kinds()[-2:] == ["error", "state"]
    # The loop stays usable (e.g. after switching models): two user messages in a row now.
    llm_server.add_script("bad", [Say("recovered")], model="better")
    loop.client = client_for(llm_server, "anthropic", model="better")
    assert await loop.handle_message("try again") == "recovered"
    assert rec.states()[-1] == "idle"


async def test_fallback_in_the_loop(llm_server: LLMServer, sandbox: BoxSandbox) -> None:
    llm_server.add_script("fb", [Fail(500, "primary down")], model="primary-model")
    llm_server.add_script("fb", [Say("backup here")])
    client = FallbackClient([client_for(llm_server, "openai", alias="primary",
                                        model="primary-model"),
                             client_for(llm_server, "anthropic", alias="backup")])
    rec = Recorder()
    assert await make_loop(client, sandbox, rec).handle_message("[script:fb]") == "backup here"
    assert rec.of("usage")[0]["model"] == "backup" and not rec.of("error")


async def test_cancel_kills_the_running_tool(llm_server: LLMServer, sandbox: BoxSandbox) -> None:
    llm_server.add_script("slow", [Call("bash", {"command": "echo $$ > /workspace/pid; "
                                                            "exec sleep 30"}), Say("back")])
    rec = Recorder()
    loop = make_loop(client_for(llm_server, "openai"), sandbox, rec, auto_approve=True)
    task = asyncio.create_task(loop.handle_message("[script:slow]"))
    pid_file = box_path(sandbox, "/workspace/pid")
    await until(lambda: read_pid(pid_file) is not None, what="the pid file")
    pid = read_pid(pid_file)
    assert pid is not None
    assert rec.states()[-1] == "running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not process_exists(pid)  # the sleep is gone
    assert rec.states()[-1] == "idle"
    assert "interrupted" in loop.history[-1]["results"][0]["output"]
    # The transcript stays valid for both wire formats: the next message just works.
    assert await loop.handle_message("and now?") == "back"


async def test_cancel_while_waiting_for_approval_and_while_streaming(
        llm_server: LLMServer, sandbox: BoxSandbox) -> None:
    llm_server.add_script("wait", [Call("bash", {"command": "true"}), Say("after")])
    llm_server.add_script("hang", [Hang("partial thought")])
    asking = asyncio.Event()

    async def ask_forever(call: ToolCall) -> tuple[bool, str]:
        asking.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    rec = Recorder()
    loop = make_loop(client_for(llm_server, "anthropic"), sandbox, rec, ask=ask_forever)
    task = asyncio.create_task(loop.handle_message("[script:wait]"))
    await asyncio.wait_for(asking.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.states()[-2:] == ["attention", "idle"] and not rec.of("tool_result")

    other = make_loop(client_for(llm_server, "anthropic"), sandbox, Recorder())
    task = asyncio.create_task(other.handle_message("[script:hang]"))
    await until(lambda: llm_server.hanging > 0, what="the model to hang")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert other.history[-1] == {"role": "assistant", "tool_calls": [],
                                 "text": "partial thought [interrupted]"}
    # The server noticed the client hang up.
    await until(lambda: llm_server.hanging == 0, 5, "the server to see the hang-up")


async def test_turn_limit_and_resume(llm_server: LLMServer, sandbox: BoxSandbox) -> None:
    llm_server.add_script("loop", [Call("list_dir", {})] * 3 + [Say("finally")])
    rec = Recorder()
    loop = make_loop(client_for(llm_server, "openai"), sandbox, rec, max_turns=2)
    answer = await loop.handle_message("[script:loop]")
    assert "Stopped after 2 model turns" in answer and rec.states()[-1] == "idle"
    assert rec.of("assistant_message")[-1] == {"text": answer}
    resumed = make_loop(client_for(llm_server, "anthropic"), sandbox, Recorder(),
                        history=loop.history)
    # history: 3 assistant messages (2 turns + the note) → step 3 of the script.
    assert await resumed.handle_message("go on") == "finally"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_continue_turn_answers_an_interrupted_call_and_finishes(
        llm_server: LLMServer, sandbox: BoxSandbox, provider: Provider) -> None:
    """A turn whose spoke was lost mid-tool-call is continued elsewhere from the hub's
    transcript: the call is answered as interrupted (not re-run), and the model goes on."""
    llm_server.add_script("moved", [Call("bash", {"command": "touch /workspace/ran-once"}),
                                    Echo("the tool said: {last_tool_result}")])
    history = [{"role": "user", "text": "[script:moved] run it"},
               {"role": "assistant", "text": "", "tool_calls": [
                   {"id": "call_lost", "name": "bash",
                    "arguments": {"command": "touch /workspace/ran-once"}}]}]
    rec = Recorder()
    loop = make_loop(client_for(llm_server, provider), sandbox, rec, auto_approve=True,
                     history=history)
    answer = await loop.continue_turn()
    assert answer.startswith("the tool said: ") and "interrupted" in answer
    assert not box_path(sandbox, "/workspace/ran-once").exists(), "never re-run silently"
    assert "user_message" not in rec.kinds(), "no message is invented"
    assert rec.of("notice")[0]["message"].startswith("continuing the interrupted turn")
    assert rec.states()[-1] == "idle"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_model_call_is_asked_again_when_the_way_is_back(
        llm_server: LLMServer, sandbox: BoxSandbox, provider: Provider) -> None:
    """The connection breaks mid-answer; ``model_retry`` (the runner's: "the hub's relay is
    back") swaps in a working client and says yes: the call is asked again, a ``notice``
    with ``retry`` voids the half-streamed text, and the history holds only the whole turn.
    Without a yes the turn fails as before."""
    llm_server.add_script("blip", [Drop("half an ans")], model="broken-model")
    llm_server.add_script("blip", [Say("the whole answer")])
    asked: list[ModelError] = []
    rec = Recorder()
    loop = make_loop(client_for(llm_server, provider, model="broken-model"), sandbox, rec)

    async def way_is_back(err: ModelError, failed: object) -> bool:
        asked.append(err)
        assert failed is loop.client
        loop.client = client_for(llm_server, provider)
        return True

    loop.model_retry = way_is_back
    assert await loop.handle_message("[script:blip] hi") == "the whole answer"
    assert len(asked) == 1 and asked[0].retryable
    assert [n["retry"] for n in rec.of("notice")] == [True]
    assert rec.of("assistant_message") == [{"text": "the whole answer"}]
    assert [m["role"] for m in loop.history] == ["user", "assistant"]
    assert not rec.of("error")

    refused = Recorder()
    never = make_loop(client_for(llm_server, provider, model="broken-model"), sandbox, refused)

    async def no(err: ModelError, failed: object) -> bool:
        return False

    never.model_retry = no
    with pytest.raises(ModelError):
        await never.handle_message("[script:blip] again")
    assert refused.states()[-1] == "error" and not refused.of("notice")
