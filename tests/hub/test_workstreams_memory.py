"""The workstream router against real spoke sessions over the in-memory pipe: routing,
leasing, requeue after a refusal (an injected clock ends the back-off), a lost spoke's
workstream resumed from the transcript, and a revoked spoke's work moving on. The scripted LLM
(real loopback HTTP, the one stand-in) answers as each spoke's own model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import RemoteError
from tests.hub.memory_cluster import MemoryCluster
from tests.llm_server import Call, Echo, Hang, LLMServer, Say, Step


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    server = await LLMServer().start()
    yield server
    await server.stop()


async def _row(hub: MemoryCluster, ws_id: str) -> dict[str, Any]:
    return await hub.workstreams.get(ws_id)


async def _state(hub: MemoryCluster, ws_id: str, *states: str) -> dict[str, Any]:
    row = await _row(hub, ws_id)
    for _ in range(2000):
        if row["state"] in states:
            return row
        await asyncio.sleep(0.005)
        row = await _row(hub, ws_id)
    raise AssertionError(f"{ws_id} stuck in {row['state']} (wanted {states})")


async def test_generic_work_goes_to_the_least_loaded_spoke_and_queues_with_a_reason(
        tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("busy", [Hang("working")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("a", slots=1)
        await hub.join("b", slots=2)
        first = (await hub.workstreams.start("[script:busy] 1", model="local"))["id"]
        assert (await _state(hub, first, "thinking"))["spoke"] == "a"  # both empty: by name
        second = (await hub.workstreams.start("[script:busy] 2", model="local"))["id"]
        assert (await _state(hub, second, "thinking"))["spoke"] == "b"  # a is full (1/1)
        third = (await hub.workstreams.start("[script:busy] 3", model="local"))["id"]
        assert (await _state(hub, third, "thinking"))["spoke"] == "b"  # b at 1/2 beats a at 1/1
        fourth = (await hub.workstreams.start("[script:busy] 4", model="local"))["id"]
        await _wait_waiting(hub, fourth, "waiting: no connected spoke has a free slot "
                                         "(a: 1/1 busy, b: 2/2 busy)")
        assert (await _row(hub, fourth))["state"] == "queued"
        llm.release()
        for ws_id in (first, second, third):
            await _state(hub, ws_id, "idle")
        assert (await _state(hub, fourth, "thinking"))["waiting"] == ""  # a slot freed: it runs
        llm.release()
        await _state(hub, fourth, "idle")


async def test_a_refused_lease_goes_back_to_the_queue_until_the_back_off_ends(
        tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("hi", [Say("hello")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("only")
        # An image the spoke does not allow: generic work is refused, returned, retried later.
        ws_id = (await hub.workstreams.start("[script:hi] x", model="local", image="other:1"))["id"]
        events = await _wait_kind(hub, ws_id, "lease_returned")
        assert "not allowed" in events[-1]["data"]["reason"]
        row = await _row(hub, ws_id)
        assert row["state"] == "queued" and row["spoke"] is None
        await _wait_waiting(hub, ws_id, "refused recently by only")
        leases = len([e for e in await hub.workstreams.events(ws_id) if e["kind"] == "assigned"])
        hub.clock.advance(31.0)  # the refusal's back-off is over: it is offered again
        hub.workstreams.kick()
        await _wait_count(hub, ws_id, "assigned", leases + 1)


async def test_a_lost_spoke_s_workstream_resumes_from_the_transcript(tmp_path: Path,
                                                                     llm: LLMServer) -> None:
    llm.add_script("resume", [Say("first answer"), Say("second answer")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("s1")
        ws_id = (await hub.workstreams.start("[script:resume] hi", model="local"))["id"]
        await _state(hub, ws_id, "idle")
        await hub.drop("s1")
        await hub.join("s1")
        await _wait_kind(hub, ws_id, "notice")
        assert (await _row(hub, ws_id))["detached"] is True
        await hub.workstreams.send(ws_id, "again")
        await _wait_count(hub, ws_id, "assistant_message", 2)
        answers = [e["data"]["text"] for e in await hub.workstreams.events(ws_id)
                   if e["kind"] == "assistant_message"]
        assert answers == ["first answer", "second answer"]
        sent = llm.requests[-1].body["messages"]
        assert [m["role"] for m in sent if m["role"] != "system"] == ["user", "assistant", "user"]


async def test_a_revoked_spoke_s_generic_work_moves_to_another_spoke(tmp_path: Path,
                                                                    llm: LLMServer) -> None:
    llm.add_script("move", [Say("on the first"), Say("on the second")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("one")
        ws_id = (await hub.workstreams.start("[script:move] hi", model="local"))["id"]
        assert (await _state(hub, ws_id, "idle"))["spoke"] == "one"
        await hub.join("two")
        await hub.registry.revoke("one")
        await hub.workstreams.send(ws_id, "go on")
        await _wait_count(hub, ws_id, "assistant_message", 2)
        assert (await _row(hub, ws_id))["spoke"] == "two"


APPROVE_THEN_ECHO: list[Step] = [Call("bash", {"command": "echo never-run"}), Echo("went on: {last_tool_result}")]


async def test_a_lost_spoke_s_turn_continues_on_another_spoke_after_the_grace(
        tmp_path: Path, llm: LLMServer) -> None:
    """Issue 9: a workstream whose spoke is lost mid-turn (here: waiting for an approval)
    moves to another spoke once the grace is over, in a new box, and the turn goes on from
    the transcript; the interrupted call is reported as such, never run."""
    llm.add_script("lost", APPROVE_THEN_ECHO)
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("s1")
        ws_id = (await hub.workstreams.start("[script:lost] go", model="local", spoke=None))["id"]
        first = await _state(hub, ws_id, "attention")
        assert first["spoke"] == "s1"
        await hub.join("s2")
        await hub.drop("s1")
        await _until_lost(hub, "s1")
        hub.workstreams.kick()
        await asyncio.sleep(0.05)
        assert (await _row(hub, ws_id))["spoke"] == "s1", "within the grace nothing moves"
        hub.clock.advance(16.0)
        hub.workstreams.kick()
        row = await _state(hub, ws_id, "idle")
        assert row["spoke"] == "s2" and row["box_id"] != first["box_id"]
        answers = [e["data"]["text"] for e in await hub.workstreams.events(ws_id)
                   if e["kind"] == "assistant_message"]
        assert answers[-1].startswith("went on: ") and "interrupted" in answers[-1]
        assert "never-run" not in answers[-1]
        notices = [e["data"]["message"] for e in await hub.workstreams.events(ws_id)
                   if e["kind"] == "notice"]
        assert any("spoke s1 was lost during a turn: the turn continues on another spoke" in n
                   for n in notices), notices
        old_box = await hub.store.get_box(first["box_id"])
        assert old_box is not None and old_box["state"] == "lost"  # reaped when s1 is back
        assert (await hub.workstreams.db.approvals(ws_id, "pending")) == []


async def test_an_idle_workstream_keeps_its_box_until_a_message_needs_it_elsewhere(
        tmp_path: Path, llm: LLMServer) -> None:
    """Nothing runs in an idle workstream: a lost spoke keeps it (and its box's files) until
    a message comes after the grace; then it goes on elsewhere."""
    llm.add_script("idle", [Say("first"), Say("second")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("s1")
        ws_id = (await hub.workstreams.start("[script:idle] hi", model="local"))["id"]
        await _state(hub, ws_id, "idle")
        await hub.join("s2")
        await hub.drop("s1")
        await _until_lost(hub, "s1")
        hub.clock.advance(16.0)
        hub.workstreams.kick()
        await asyncio.sleep(0.05)
        assert (await _row(hub, ws_id))["spoke"] == "s1", "idle: nothing to move yet"
        await hub.workstreams.send(ws_id, "again")
        await _wait_count(hub, ws_id, "assistant_message", 2)
        assert (await _row(hub, ws_id))["spoke"] == "s2"


async def test_directed_work_waits_for_its_spoke_and_continues_there(
        tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("home", APPROVE_THEN_ECHO)
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("home")
        await hub.join("other")
        ws_id = (await hub.workstreams.start("[script:home] go", model="local", spoke="home"))["id"]
        await _state(hub, ws_id, "attention")
        await hub.drop("home")
        await _until_lost(hub, "home")
        hub.clock.advance(16.0)
        hub.workstreams.kick()
        await _wait_waiting(hub, ws_id, "spoke home was lost; it runs only there")
        assert (await _row(hub, ws_id))["spoke"] == "home"
        await hub.join("home")  # back, restarted: the turn continues there
        row = await _state(hub, ws_id, "idle")
        assert row["spoke"] == "home"
        texts = [e["data"]["text"] for e in await hub.workstreams.events(ws_id)
                 if e["kind"] == "assistant_message"]
        assert texts and "interrupted" in texts[-1]


async def test_interrupt_policy_ends_the_turn_in_error_and_a_message_goes_on(
        tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("stop", [Hang("thinking hard"), Say("picked up again")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("s1")
        ws_id = (await hub.workstreams.start("[script:stop] go", model="local",
                                             on_loss="interrupt"))["id"]
        await _state(hub, ws_id, "thinking")
        await hub.join("s2")
        await hub.drop("s1")
        llm.release()
        await _until_lost(hub, "s1")
        hub.clock.advance(16.0)
        hub.workstreams.kick()
        row = await _state(hub, ws_id, "error")
        assert row["error"].startswith("spoke s1 was lost: the turn was interrupted")
        await hub.workstreams.send(ws_id, "carry on")
        await _wait_count(hub, ws_id, "assistant_message", 1)
        assert (await _row(hub, ws_id))["spoke"] == "s2"
        with pytest.raises(RemoteError, match="on_loss must be one of"):
            await hub.workstreams.start("x", model="local", on_loss="pray")


async def test_a_clean_leave_hands_work_back_at_once(tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("leave", APPROVE_THEN_ECHO)
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("s1")
        ws_id = (await hub.workstreams.start("[script:leave] go", model="local"))["id"]
        first = await _state(hub, ws_id, "attention")
        await hub.join("s2")
        hub.spokes["s1"].stop.set()  # SIGTERM: spoke.leaving, a short drain, goodbye
        assert await hub.spokes["s1"].stopped() is True
        row = await _state(hub, ws_id, "idle")  # no grace, no clock advance
        assert row["spoke"] == "s2"
        assert first["box_id"] not in {b.id for b in await hub.spokes["s1"].boxes.list()}, \
            "the spoke removed the box of the work it handed back"
        for _ in range(400):
            row_s1 = await hub.store.get_spoke("s1")
            if row_s1 is not None and row_s1["state"] == "left":
                break
            await asyncio.sleep(0.005)
        assert row_s1 is not None and row_s1["state"] == "left", "a goodbye, not a loss"


# ----------------------------------------------------------------------- helpers
async def _wait_count(hub: MemoryCluster, ws_id: str, kind: str, count: int) -> list[dict[str, Any]]:
    for _ in range(2000):
        events = await hub.workstreams.events(ws_id)
        if len([e for e in events if e["kind"] == kind]) >= count:
            return events
        await asyncio.sleep(0.005)
    raise AssertionError(f"fewer than {count} {kind} events in {ws_id}: {events}")


async def _wait_kind(hub: MemoryCluster, ws_id: str, kind: str) -> list[dict[str, Any]]:
    events = await _wait_count(hub, ws_id, kind, 1)
    return [e for e in events if e["kind"] == kind]


async def _until_lost(hub: MemoryCluster, spoke: str) -> None:
    """Until the hub has recorded ``spoke`` as lost (its grace starts then)."""
    await hub.until(lambda: hub.workstreams.moves.lost_since(spoke) is not None,
                    f"{spoke} recorded lost")


async def _wait_waiting(hub: MemoryCluster, ws_id: str, fragment: str) -> None:
    for _ in range(2000):
        if fragment in (await _row(hub, ws_id))["waiting"]:
            return
        hub.workstreams.kick()
        await asyncio.sleep(0.005)
    raise AssertionError(f"{ws_id} never said it waits because {fragment!r}")
