"""The bridges between the event loop and the Docker worker threads (spoke/boxes/transfer.py):
order kept, errors handed on unchanged, a bounded number of chunks read ahead, and either side
able to give up without leaving the other blocked. Real threads, a real loop; no timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from spoke.boxes.transfer import PushToLoop, feed_thread, stream_from_thread


async def numbered(n: int, pulled: list[int] | None = None) -> AsyncIterator[bytes]:
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        yield str(i).encode()


async def test_feed_thread_keeps_order_and_returns_the_result() -> None:
    with ThreadPoolExecutor(1) as pool:
        got = await feed_thread(pool, numbered(50), lambda chunks: [c.decode() for c in chunks])
    assert got == [str(i) for i in range(50)]


async def test_feed_thread_reads_a_bounded_number_ahead() -> None:
    """While the thread holds the first chunk, the loop reads at most a few more."""
    pulled: list[int] = []
    took_one, release = threading.Event(), threading.Event()

    def consume(chunks: Iterator[bytes]) -> int:
        it = iter(chunks)
        next(it)
        took_one.set()
        release.wait(30)
        return 1 + sum(1 for _ in it)

    with ThreadPoolExecutor(1) as pool:
        task = asyncio.ensure_future(feed_thread(pool, numbered(100, pulled), consume))
        assert await asyncio.to_thread(took_one.wait, 30)
        for _ in range(20):  # let the pump run as far as it may
            await asyncio.sleep(0.01)
        assert len(pulled) <= 6
        release.set()
        assert await task == 100


class SourceFailed(Exception):
    pass


async def test_feed_thread_raises_the_source_error_unchanged() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"a"
        raise SourceFailed("the upload was cut short")

    def consume(chunks: Iterator[bytes]) -> None:
        try:
            for _ in chunks:
                pass
        except SourceFailed as exc:
            raise RuntimeError("the thread's own wrapping") from exc

    with ThreadPoolExecutor(1) as pool, pytest.raises(SourceFailed, match="cut short"):
        await feed_thread(pool, failing(), consume)


async def test_feed_thread_consumer_stopping_early_stops_the_pump() -> None:
    pulled: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        got = await feed_thread(pool, numbered(1000, pulled), lambda chunks: next(iter(chunks)))
        await asyncio.sleep(0.05)
    assert got == b"0"
    assert len(pulled) <= 6


async def test_stream_from_thread_keeps_order_and_ends_with_the_error() -> None:
    def produce(channel: PushToLoop) -> None:
        for i in range(30):
            assert channel.put(str(i).encode())
        raise SourceFailed("docker went away")

    got: list[bytes] = []
    with ThreadPoolExecutor(1) as pool, pytest.raises(SourceFailed, match="went away"):
        async for chunk in stream_from_thread(pool, produce):
            got.append(chunk)
    assert got == [str(i).encode() for i in range(30)]


async def test_stream_from_thread_consumer_leaving_stops_the_thread() -> None:
    """The consumer closes after one chunk; the producer's next put returns False."""
    stopped = threading.Event()
    puts: list[bool] = []

    def produce(channel: PushToLoop) -> None:
        while ok := channel.put(b"x" * 1024):
            puts.append(ok)
        stopped.set()

    with ThreadPoolExecutor(1) as pool:
        stream = stream_from_thread(pool, produce, maxsize=2)
        assert await anext(stream) == b"x" * 1024
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        assert await asyncio.to_thread(stopped.wait, 30)
    assert len(puts) <= 4  # bounded: the thread never ran far ahead of its reader
