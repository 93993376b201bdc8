"""An audited action's last writes committed with its audit row (hub/audit.py ``Outcome.also``;
a box create's ``running``, hub/boxes.py): one transaction, without processes (real SQLite in
a tmp dir). The row and the writes land together; if the writes fail, the action fails, its
row says so and nothing of the writes is kept; without ``also`` nothing changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.audit import ACTING, audited
from hub.store import Store, Tx


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "hub.db")
    await s.open()
    yield s
    await s.close()


async def test_the_writes_and_the_row_land_together(store: Store) -> None:
    await store.add_box("bx1", "sp", "img", {})
    token = ACTING.set("user:ann")
    try:
        async with audited(store, "box.create", "bx1", "img", spoke="sp") as outcome:
            outcome.also = store.box_state_write("bx1", "running")
    finally:
        ACTING.reset(token)
    box = await store.get_box("bx1")
    assert box is not None and box["state"] == "running"
    rows = await store.recent_audit(kind="box.create")
    assert [(r["subject"], r["actor"], r["spoke"], r["result"]) for r in rows] == \
        [("bx1", "user:ann", "sp", "ok")]


async def test_failing_writes_fail_the_action_and_its_row_says_so(store: Store) -> None:
    await store.add_box("bx2", "sp", "img", {})

    def broken(tx: Tx) -> None:
        store.box_state_write("bx2", "running")(tx)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        async with audited(store, "box.create", "bx2", "img", spoke="sp") as outcome:
            outcome.also = broken
    box = await store.get_box("bx2")
    assert box is not None and box["state"] == "creating"  # rolled back with the row
    rows = await store.recent_audit(kind="box.create")
    assert [(r["subject"], r["result"]) for r in rows] == [("bx2", "internal: RuntimeError")]


async def test_a_failed_action_ignores_its_writes_and_rows_stay_single(store: Store) -> None:
    await store.add_box("bx3", "sp", "img", {})
    with pytest.raises(ValueError):
        async with audited(store, "box.create", "bx3", "img") as outcome:
            outcome.also = store.box_state_write("bx3", "running")
            raise ValueError("no")
    async with audited(store, "box.destroy", "bx3"):
        pass
    box = await store.get_box("bx3")
    assert box is not None and box["state"] == "creating"
    rows = await store.recent_audit()
    assert sorted((r["kind"], r["result"]) for r in rows) == \
        [("box.create", "internal: ValueError"), ("box.destroy", "ok")]
