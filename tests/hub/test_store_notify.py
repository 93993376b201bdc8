"""Wake-ups through the store (``Tx.notify`` / ``Engine.subscribe``) on both engines: delivered
after commit on the owner's event loop, never for a transaction that rolled back; on
PostgreSQL to every engine on the database (every hub), and again after the listener's
connection is killed. Real SQLite, real PostgreSQL (tests/pg.py).
"""

from __future__ import annotations

import asyncio
import functools
import threading

import psycopg
import pytest

from hub.store import Store, Tx


class Heard:
    """A subscriber that records topics and the thread it was called on."""

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.threads: set[int] = set()
        self._changed = asyncio.Event()

    def __call__(self, topic: str) -> None:
        self.topics.append(topic)
        self.threads.add(threading.get_ident())
        self._changed.set()

    async def until(self, topic: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while topic not in self.topics:
                self._changed.clear()
                await self._changed.wait()


def notify(topic: str, tx: Tx) -> None:
    tx.notify(topic)


async def test_a_topic_is_heard_after_commit_and_never_on_rollback(
        two_stores: tuple[Store, Store]) -> None:
    store, _ = two_stores
    heard = Heard()
    store.engine.subscribe(heard)
    seen_inside: list[list[str]] = []

    def commit(tx: Tx) -> None:
        tx.notify("ws:1")
        tx.insert("audit", {"ts": 1.0, "kind": "k", "subject": "s"})
        seen_inside.append(list(heard.topics))

    def fail(tx: Tx) -> None:
        tx.notify("rolled-back")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await store.transaction(fail)
    await store.transaction(commit)
    await heard.until("ws:1")
    await store.transaction(lambda tx: tx.notify("marker"))
    await heard.until("marker")
    assert seen_inside == [[]]  # not before the commit
    assert "rolled-back" not in heard.topics
    assert heard.threads == {threading.get_ident()}  # on the event loop's thread


async def test_two_engines_on_one_database_hear_each_other(
        two_stores: tuple[Store, Store], engine_kind: str) -> None:
    a, b = two_stores
    heard_a, heard_b = Heard(), Heard()
    a.engine.subscribe(heard_a)
    b.engine.subscribe(heard_b)
    await a.transaction(lambda tx: tx.notify("from-a"))
    await heard_a.until("from-a")
    if engine_kind == "sqlite":  # one hub per SQLite file: only its own subscribers
        await b.transaction(lambda tx: tx.notify("from-b"))
        await heard_b.until("from-b")
        assert "from-a" not in heard_b.topics and "from-b" not in heard_a.topics
        return
    await heard_b.until("from-a")
    await b.transaction(lambda tx: tx.notify("from-b"))
    await heard_a.until("from-b")


@pytest.mark.parametrize("engine_kind", ["postgresql"], indirect=True)
async def test_the_listener_comes_back_after_its_connection_is_killed(
        two_stores: tuple[Store, Store], pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    a, b = two_stores
    heard = Heard()
    b.engine.subscribe(heard)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND query ILIKE 'LISTEN%'").fetchall()
    assert len(killed) == 2  # both engines' listeners
    for attempt in range(100):  # wake-ups sent while it reconnects may be lost: they are hints
        await a.transaction(functools.partial(notify, f"after-{attempt}"))
        try:
            await heard.until(f"after-{attempt}", timeout=0.2)
            break
        except TimeoutError:
            continue
    else:
        pytest.fail("the listener never came back")
    assert "database listener lost its connection" in caplog.text
    assert "database listener reconnected to postgresql://postgres@127.0.0.1" in caplog.text
