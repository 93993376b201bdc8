"""protocol.link: the one asyncio driver both ends use, over the in-memory pipe.

A HubDriver and a SpokeDriver on the two ends of ``memory_pipe()``, past a real handshake:
typed calls and their results, streams with flow control, uploads, cancellation reaching
the handler, deadlines, heartbeats and staleness with an injected clock, and a lost link
failing every outstanding call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from protocol import events as ev
from protocol import messages
from protocol import verbs as v
from protocol.connection import Limits, State
from protocol.errors import ErrorCode, RemoteError
from protocol.hub_driver import HubDriver
from protocol.link import Ticker, batched
from protocol.sides import HubConnection, SpokeConnection
from protocol.spoke_driver import CallIO, SpokeDriver
from protocol.transport import MemoryTransport, memory_pipe
from tests.protocol.helpers import AUTH, AUTH_RESULT, BOX, CHALLENGE, FakeClock


class Served:
    """The spoke's handler: what a test wants each verb to do."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.uploaded = b""
        self.hanging = 0
        self._changed = asyncio.Condition()

    async def wait_hanging(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.hanging >= count)

    async def __call__(self, req: ev.RequestReceived, io: CallIO) -> BaseModel:
        p = req.params
        if isinstance(p, v.BoxRef):
            return v.Destroyed(existed=p.box_id == BOX)
        if isinstance(p, v.BoxExec):
            if p.cmd == ["hang"]:
                async with self._changed:
                    self.hanging += 1
                    self._changed.notify_all()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
            for i in range(int(p.cmd[1]) if p.cmd[0] == "count" else 1):
                await io.send("stdout", f"line {i}\n".encode())
            return v.ExecDone(exit_code=7)
        if isinstance(p, v.PutFile):
            try:
                async for piece in io.upload():
                    self.uploaded += piece
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return v.FileDone(size=len(self.uploaded), path=p.path)
        return v.Empty()


async def pair(limits: Limits | None = None, clock: FakeClock | None = None
               ) -> tuple[HubDriver, SpokeDriver, Served, list[asyncio.Task[None]]]:
    clock = clock or FakeClock()
    hub_end, spoke_end = memory_pipe()
    served = Served()
    hub = HubDriver(HubConnection(clock, limits), hub_end, clock=clock, tick_s=3600,
                    heartbeat=lambda: ("hub.heartbeat", messages.HubHeartbeat()))
    spoke = SpokeDriver(SpokeConnection(clock, limits), spoke_end, served, clock=clock, tick_s=3600)
    hub.conn.send_hello(CHALLENGE, "test")
    await hub.flush()
    assert [type(e) for e in await spoke.receive_events()] == [ev.HelloReceived]
    spoke.conn.send_auth(AUTH)
    await spoke.flush()
    assert [type(e) for e in await hub.receive_events()] == [ev.AuthRequested]
    hub.conn.accept_auth(AUTH_RESULT)
    await hub.flush()
    assert [type(e) for e in await spoke.receive_events()] == [ev.Authenticated]
    tasks = [asyncio.create_task(hub.run()), asyncio.create_task(spoke.run())]
    return hub, spoke, served, tasks


async def test_typed_calls_return_the_verbs_result_model() -> None:
    hub, _spoke, _served, tasks = await pair()
    gone = await hub.call(v.BOX_DESTROY, v.BoxRef(box_id=BOX))
    assert gone == v.Destroyed(existed=True)
    pong = await hub.call(v.SPOKE_PING, v.Empty())
    assert pong == v.Empty()
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)


async def test_a_stream_delivers_every_chunk_in_order_under_a_small_window() -> None:
    hub, _spoke, _served, tasks = await pair(Limits(window_chunks=2))
    call = await hub.call_stream(v.BOX_EXEC, v.BoxExec(box_id=BOX, cmd=["count", "50"]))
    got = [data async for _stream, data in call.chunks()]
    assert got == [f"line {i}\n".encode() for i in range(50)]
    assert (await call.result()).exit_code == 7
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)


async def test_an_upload_arrives_whole() -> None:
    hub, _spoke, served, tasks = await pair(Limits(window_chunks=2, chunk_bytes=1024))
    blob = bytes(range(256)) * 40

    async def source() -> AsyncIterator[bytes]:
        for start in range(0, len(blob), 700):
            yield blob[start:start + 700]

    done = await hub.call_upload(v.BOX_PUT_FILE, v.PutFile(box_id=BOX, path="f", size=len(blob)),
                                 source())
    assert done.size == len(blob) and served.uploaded == blob
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)


async def test_a_broken_upload_source_cancels_the_handler_on_the_spoke() -> None:
    """The HTTP client of an upload goes away mid-body: the spoke's handler is cancelled at
    once instead of waiting for the rest until the deadline (issue 8, item 1)."""
    hub, _spoke, served, tasks = await pair(Limits(chunk_bytes=1024))

    async def source() -> AsyncIterator[bytes]:
        yield b"x" * 4096
        while not served.uploaded:  # noqa: ASYNC110 (the handler is reading the body)
            await asyncio.sleep(0.01)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await hub.call_upload(v.BOX_PUT_FILE, v.PutFile(box_id=BOX, path="f", size=10_000),
                              source())
    await asyncio.wait_for(served.cancelled.wait(), 5)
    assert hub._pending == {}  # the call and its slot are given back at once
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)


async def test_cancelling_the_caller_cancels_the_handler_on_the_spoke() -> None:
    hub, spoke, served, tasks = await pair()
    call = asyncio.create_task(hub.call(v.BOX_EXEC, v.BoxExec(box_id=BOX, cmd=["hang"])))
    await asyncio.wait_for(served.wait_hanging(1), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(served.cancelled.wait(), 5)
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)


async def test_a_cancel_before_the_handler_ran_leaves_no_task_behind() -> None:
    """A request and its cancel read in one batch: the handler's task is cancelled before it
    first runs (so its own cleanup never runs) and must still be forgotten, or the session's
    stop waits for it (found through the hub-to-hub forwarding tests)."""
    hub, spoke, _served, tasks = await pair()
    spoke._request(ev.RequestReceived(call_id=99, verb=v.SPOKE_PING.name, params=v.Empty(),
                                      deadline=time.monotonic() + 60))
    spoke._cancel(ev.CancelReceived(call_id=99))
    assert 99 in spoke.tasks
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert spoke.tasks == {}
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)


async def test_a_deadline_fails_the_call_and_a_lost_link_fails_the_rest() -> None:
    clock = FakeClock()
    hub, spoke, served, tasks = await pair(clock=clock)
    short = asyncio.create_task(hub.call(v.BOX_EXEC, v.BoxExec(box_id=BOX, cmd=["hang"]), timeout_s=1.0))
    long = asyncio.create_task(hub.call(v.BOX_EXEC, v.BoxExec(box_id=BOX, cmd=["hang"])))
    await asyncio.wait_for(served.wait_hanging(2), 5)
    clock.advance(1.0 + Limits().deadline_grace_s)
    await hub.tick()
    with pytest.raises(RemoteError) as err:
        await short
    assert err.value.code is ErrorCode.TIMEOUT
    await spoke.transport.close(1011, "spoke died")
    with pytest.raises(RemoteError) as lost:
        await long
    assert lost.value.code is ErrorCode.UNAVAILABLE
    await asyncio.gather(*tasks)
    assert not spoke.tasks, "every handler on the spoke stopped with the link"
    assert hub.closed and hub.close_reason == "spoke died"


async def test_heartbeats_and_staleness_follow_the_injected_clock() -> None:
    clock = FakeClock()
    hub, spoke, _served, tasks = await pair(Limits(heartbeat_s=3.0, stale_after_s=10.0), clock)
    sent_before = hub.transport.sent  # type: ignore[attr-defined]
    await hub.tick()
    assert hub.transport.sent == sent_before + 1  # type: ignore[attr-defined]  # the first beat
    await hub.tick()
    assert hub.transport.sent == sent_before + 1  # type: ignore[attr-defined]  # not due yet
    clock.advance(11.0)  # nothing from the spoke for longer than stale_after_s
    await hub.tick()
    await asyncio.gather(*tasks)
    assert hub.closed and hub.close_reason == "heartbeats missed"
    assert isinstance(spoke.transport, MemoryTransport)
    assert spoke.transport.peer_close == (messages.CLOSE_STALE, "heartbeats missed")


async def test_one_ticker_drives_the_timers_of_many_links() -> None:
    """The hub's links share one timer task; an idle hub link heartbeats, a busy one need
    not (any frame it sent proves it is alive)."""
    ticker = Ticker(tick_s=0.01)
    limits = Limits(heartbeat_s=0.05)
    ends, tasks = [], []
    for _ in range(3):
        hub_end, spoke_end = memory_pipe()
        hub = HubDriver(HubConnection(time.monotonic, limits), hub_end, ticker=ticker,
                        heartbeat=lambda: ("hub.heartbeat", messages.HubHeartbeat()))
        hub.heartbeat_always = False
        hub.conn.state = State.OPEN  # past the handshake (tested elsewhere): timers only
        tasks.append(asyncio.create_task(hub.run()))
        ends.append((hub, hub_end, spoke_end))
    await asyncio.sleep(0)
    assert len(ticker) == 3
    await asyncio.sleep(0.3)
    assert all(hub_end.sent >= 3 for _hub, hub_end, _spoke in ends), "idle links heartbeat"
    busy, busy_end, _ = ends[0]
    before = busy_end.sent
    for _ in range(20):  # something sent every 10 ms: no heartbeat needed on top
        busy._last_sent = time.monotonic()
        await asyncio.sleep(0.01)
    assert busy_end.sent == before
    for hub, _hub_end, _spoke in ends:
        await hub.close(1000, "done")
    await asyncio.gather(*tasks)
    assert len(ticker) == 0
    await ticker.stop()


async def test_a_burst_of_calls_leaves_in_one_message_when_the_peer_reads_batches() -> None:
    """Frames queued in one turn of the loop are written together: as one JSON array when
    the peer said "batch" (one TLS record, one write), each judged alone on arrival."""
    hub, spoke, _served, tasks = await pair()
    hub.batch = spoke.batch = True
    before = hub.transport.sent if isinstance(hub.transport, MemoryTransport) else 0
    results = await asyncio.gather(*(hub.call(v.SPOKE_PING, v.Empty()) for _ in range(50)))
    assert results == [v.Empty()] * 50
    assert isinstance(hub.transport, MemoryTransport)
    assert hub.transport.sent - before <= 3, "50 requests in a message or three, not 50"
    assert batched(["a"], 10) == ["a"]
    assert batched(['{"x":1}', '{"y":2}', '{"z":3}'], 20) == ['[{"x":1},{"y":2}]', '{"z":3}']
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)
