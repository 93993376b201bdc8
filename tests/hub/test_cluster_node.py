"""Several hubs on one database, without processes: the cluster tables (hub/store/cluster.py)
and the cluster node (hub/cluster/node.py), on SQLite and PostgreSQL (tests/hub/conftest.py),
two or three stores on one database standing for two or three hubs, an injected clock.

Pins: one leader at a time, taken over once its holder stops beating; a dead hub's spokes
are lost once; spoke holders follow the newest connection; wake-ups reach their handlers on
every hub; the remote view follows the holders.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hub.cluster.links import RemoteLinks
from hub.cluster.node import ClusterNode
from hub.store import Holder, Store
from tests.hub.conftest import Clock, MakeStore


@pytest.fixture
async def stores(make_store: MakeStore) -> AsyncIterator[list[Store]]:
    made = [make_store() for _ in range(3)]
    for store in made:
        await store.open()
    yield made
    for store in made:
        await store.close()


async def take(store: Store, spoke: str, hub_id: str, *, labels: tuple[str, ...] = (),
               models: tuple[str, ...] = (), max_workstreams: int = 1,
               relay_token_hash: str = "") -> None:
    """What a hub writes when a spoke's link connects to it (hub/registry.py)."""
    await store.transaction(store.spoke_connected_writes(
        spoke, hub_id, labels=list(labels), models=list(models), version="1",
        max_workstreams=max_workstreams, relay_token_hash=relay_token_hash))


async def _enroll(store: Store, *names: str) -> None:
    for name in names:
        await store.enroll_spoke(name, "key-" + name, [], "1")
        # marked connected, held by no hub yet (take() makes a hub its holder)
        await store.transaction(lambda tx, name=name: tx.update(  # type: ignore[misc]
            "spokes", "name", name, {"connected": 1, "state": "connected"}))


async def test_one_leader_at_a_time(stores: list[Store], clock: Clock) -> None:
    a, b, c = (ClusterNode(s, f"https://hub-{i}", "1", hub_id=f"h{i}") for i, s in enumerate(stores))
    for node in (a, b, c):
        await node.beat()
    assert [n.is_leader() for n in (a, b, c)] == [True, False, False]
    clock.t += 2.0
    for node in (c, b, a):  # renewals in any order keep the leader
        await node.beat()
    assert [n.is_leader() for n in (a, b, c)] == [True, False, False]
    # The leader stops beating (killed): after the TTL, exactly one other takes over.
    clock.t += 4.0
    await b.beat()
    await c.beat()
    assert not b.is_leader() and not c.is_leader()  # its lease still runs
    clock.t += 2.2
    await b.beat()
    await c.beat()
    assert b.is_leader() and not c.is_leader()
    status = await c.status()
    assert status["leader"] == "h1"
    # The new leader swept the dead hub's row on the beat that made it leader.
    assert [(h["id"], h["live"], h["leader"]) for h in status["hubs"]] == [
        ("h1", True, True), ("h2", True, False)]
    # The old leader comes back (a paused process): it is no longer the leader, and rejoins.
    await a.beat()
    assert not a.is_leader() and b.is_leader()
    assert [h["id"] for h in (await a.status())["hubs"]] == ["h1", "h2", "h0"]


async def test_a_dead_hubs_spokes_are_lost_once(stores: list[Store], clock: Clock) -> None:
    sa, sb, _sc = stores
    a, b = ClusterNode(sa, "https://a", "1", hub_id="ha"), ClusterNode(sb, "https://b", "1", hub_id="hb")
    await a.beat()
    await b.beat()
    await _enroll(sa, "s1", "s2", "s3")
    for name in ("s1", "s2"):
        await take(sa, name, "ha", labels=("gpu",), models=("m",), max_workstreams=2, relay_token_hash="t-" + name)
    await take(sb, "s3", "hb", relay_token_hash="t-s3")
    holder = await sb.holder_of("s1", a.ttl_s)
    assert holder is not None and (holder.hub_id, holder.hub_url, holder.labels) == ("ha", "https://a", ("gpu",))
    assert (await sb.holder_by_relay_token("t-s2", a.ttl_s) or holder).spoke == "s2"
    lost: list[list[str]] = []

    async def told(names: list[str]) -> None:
        lost.append(sorted(names))

    b.on_spokes_lost.append(told)
    clock.t += a.ttl_s + 1  # a stops beating: b becomes leader and sweeps
    await b.beat()
    assert b.is_leader() and lost == [["s1", "s2"]]
    assert await sb.holder_of("s1", a.ttl_s) is None
    rows = {r["name"]: r for r in await sb.list_spokes()}
    assert (rows["s1"]["connected"], rows["s1"]["state"]) == (0, "lost")
    assert rows["s3"]["connected"] == 1  # held by a live hub
    await b.beat()
    assert lost == [["s1", "s2"]]  # once


async def test_spoke_holders_follow_the_newest_connection(stores: list[Store], clock: Clock) -> None:
    sa, sb, _ = stores
    a, b = ClusterNode(sa, "https://a", "1", hub_id="ha"), ClusterNode(sb, "https://b", "1", hub_id="hb")
    await a.beat()
    await b.beat()
    await _enroll(sa, "s1")
    await take(sa, "s1", "ha", relay_token_hash="x")
    # It reconnects through hub b: b holds it, and a's late close changes nothing.
    await take(sb, "s1", "hb", relay_token_hash="y")
    audit_rows = len(await sa.recent_audit())
    assert not await sa.spoke_link_closed("s1", "ha", reason="replaced", state="lost")
    holder = await sa.holder_of("s1", a.ttl_s)
    assert holder is not None and holder.hub_id == "hb"
    assert (await sa.get_spoke("s1") or {})["connected"] == 1 and len(await sa.recent_audit()) == audit_rows
    # b's link closes: the spoke is lost, with its audit row.
    assert await sb.spoke_link_closed("s1", "hb", reason="heartbeats missed", state="lost")
    assert await sa.holder_of("s1", a.ttl_s) is None
    row = await sa.get_spoke("s1") or {}
    assert (row["connected"], row["state"], row["disconnect_reason"]) == (0, "lost", "heartbeats missed")
    assert (await sa.recent_audit(1))[0]["kind"] == "spoke.lost"
    await take(sa, "s1", "ha")  # back, through a
    # At a start, spokes marked connected that no live hub holds are lost; held ones stay.
    await _enroll(sa, "s2", "s3")  # s3: marked connected, but no hub holds it (killed)
    await take(sb, "s2", "hb", relay_token_hash="z")
    await sa.mark_unheld_disconnected(a.ttl_s)
    rows = {r["name"]: r for r in await sa.list_spokes()}
    assert (rows["s3"]["connected"], rows["s3"]["disconnect_reason"]) == (0, "hub restarted")
    assert rows["s1"]["connected"] == 1 and rows["s2"]["connected"] == 1  # held by live hubs
    clock.t += a.ttl_s + 1
    await b.beat()  # a is dead (b, now the leader, sweeps it: s1 lost with its hub)
    rows = {r["name"]: r for r in await sa.list_spokes()}
    assert (rows["s1"]["connected"], rows["s1"]["disconnect_reason"]) == (0, "its hub stopped answering")
    assert rows["s2"]["connected"] == 1


async def test_the_cluster_secret_is_one_for_all(stores: list[Store]) -> None:
    secrets = {await s.cluster_secret("peer") for s in stores}
    assert len(secrets) == 1 and len(secrets.pop()) >= 32


async def test_wakeups_reach_their_handlers(stores: list[Store]) -> None:
    """A topic notified in a transaction reaches the handler of its prefix on every hub (on
    SQLite, the hubs of one process: the engine delivers to its own subscribers), after the
    commit; a rolled-back one reaches nobody."""
    sa, sb, _ = stores
    a, b = ClusterNode(sa, "https://a", "1", hub_id="ha"), ClusterNode(sb, "https://b", "1", hub_id="hb")
    got: dict[str, list[str]] = {"a": [], "b": []}
    for key, node in (("a", a), ("b", b)):
        node.on("ws:", lambda rest, key=key: got[key].append("ws " + rest))  # type: ignore[misc]
        node.on("spoke:", lambda rest, key=key: got[key].append("spoke " + rest))  # type: ignore[misc]
        await node.start()
    try:
        with pytest.raises(RuntimeError):
            def fail(tx: object) -> None:
                tx.notify("ws:never")  # type: ignore[attr-defined]
                raise RuntimeError("rolled back")
            await sa.transaction(fail)
        a.publish("ws:w1")
        await take(sa, "s9", "ha", relay_token_hash="q")
        expect_b = ["spoke s9", "ws w1"]
        on_sqlite = sa.engine.kind == "sqlite"  # type: ignore[attr-defined]
        for _ in range(100):
            if sorted(got["a"]) == expect_b and (on_sqlite or sorted(got["b"]) == expect_b):
                break
            await asyncio.sleep(0.05)
        assert sorted(got["a"]) == expect_b
        if not on_sqlite:  # another connection to the same database: PostgreSQL's NOTIFY
            assert sorted(got["b"]) == expect_b
    finally:
        await a.stop()
        await b.stop()


def test_remote_links_follow_the_holders() -> None:
    made: list[str] = []

    def make(h: Holder) -> str:
        made.append(f"{h.spoke}@{h.hub_id}")
        return f"{h.spoke}@{h.hub_id}"

    def holder(spoke: str, hub: str) -> Holder:
        return Holder(spoke=spoke, hub_id=hub, hub_url="https://" + hub, labels=(), models=(),
                      max_workstreams=1, leaving=False, relay_token_hash="")

    view: RemoteLinks[str] = RemoteLinks(make)
    view.replace([holder("s1", "h1"), holder("s2", "h2")])
    assert view.links() == ["s1@h1", "s2@h2"]
    view.replace([holder("s1", "h1"), holder("s2", "h3")])  # s2 moved; s1 kept its link
    assert view.get("s2") == "s2@h3" and made.count("s1@h1") == 1
    view.put("s1", None)
    assert view.get("s1") is None and view.links() == ["s2@h3"]
    assert RemoteLinks[str]().links() == []  # no peer client: nothing to call


async def test_a_restarted_hub_retires_its_predecessor_at_once(stores: list[Store], clock: Clock) -> None:
    """A hub killed and started again at the same address: the new process takes the leader
    lease and drops the old one's spokes at its start, without waiting out the TTL."""
    sa, sb, _ = stores
    old = ClusterNode(sa, "https://127.0.0.1:8443", "1", hub_id="old")
    await old.beat()
    await _enroll(sa, "s1")
    await take(sa, "s1", "old", relay_token_hash="r")
    clock.t += 1.0  # killed a second ago: its row still looks alive
    new = ClusterNode(sb, "https://127.0.0.1:8443", "1", hub_id="new")
    lost: list[str] = []

    async def told(names: list[str]) -> None:
        lost.extend(names)

    new.on_spokes_lost.append(told)
    await new.start()
    try:
        assert new.is_leader() and lost == ["s1"]
        assert [h["id"] for h in (await new.status())["hubs"]] == ["new"]
        assert (await sb.get_spoke("s1") or {})["connected"] == 0
    finally:
        await new.stop()
    # On its data dir's own SQLite file a hub is alone (the run lock): a predecessor at
    # another address (--port 0, a new port each start) is retired at once as well.
    await new.beat()
    await take(sb, "s1", "new")
    clock.t += 1.0
    other = ClusterNode(sa, "https://127.0.0.1:9999", "1", hub_id="other", alone=True)
    lost.clear()
    other.on_spokes_lost.append(told)
    await other.start()
    try:
        assert other.is_leader() and lost == ["s1"]
        assert [h["id"] for h in (await other.status())["hubs"]] == ["other"]
    finally:
        await other.stop()


class FakeLink:
    """What check_holder touches of a link: open or closed, and the close it was given."""

    def __init__(self, name: str) -> None:
        self.name, self.closed, self.close_code = name, False, 0

    async def close(self, code: int, reason: str) -> None:
        self.closed, self.close_code = True, code


async def test_a_spoke_that_moves_is_closed_on_its_old_hub(stores: list[Store]) -> None:
    """Hub a holds s1's link; s1 connects to hub b (newer): a's link is closed as replaced
    and a's view then calls s1 through b; a revoke through b closes b's link as revoked."""
    from hub.registry import Registry
    from protocol import messages
    from protocol.connection import Limits
    from protocol.tokens import hash_secret

    sa, sb, _ = stores
    nodes = [ClusterNode(sa, "https://a", "1", hub_id="ha"), ClusterNode(sb, "https://b", "1", hub_id="hb")]
    for node in nodes:
        await node.beat()
    regs = [Registry(s, "sha256:" + "ab" * 32, Limits(), "test") for s in (sa, sb)]
    for reg, node in zip(regs, nodes, strict=True):
        reg.hub_id = node.hub_id
        reg.remote.make_link = lambda h: f"via {h.hub_id}"  # type: ignore[assignment,return-value]
    await _enroll(sa, "s1")
    old, new = FakeLink("s1"), FakeLink("s1")
    regs[0].links["s1"] = old  # type: ignore[assignment]
    await take(sa, "s1", "ha", relay_token_hash="r1")
    await regs[0].check_holder("s1")
    assert not old.closed  # still its holder
    regs[1].links["s1"] = new  # type: ignore[assignment]
    await take(sb, "s1", "hb", relay_token_hash=hash_secret("relay-token-of-b"))
    await regs[0].check_holder("s1")
    assert old.closed and old.close_code == messages.CLOSE_REPLACED
    assert regs[0].remote.get("s1") == "via hb"
    # s1's model-relay request reached hub a (the load balancer's choice): a knows whose.
    assert await regs[0].relay_spoke("relay-token-of-b") == "s1"
    assert await regs[0].relay_spoke("some-other-token") is None
    await sb.revoke_spoke("s1")
    await regs[1].check_holder("s1")
    assert new.closed and new.close_code == messages.CLOSE_REVOKED


async def test_mcp_sessions_are_found_on_live_hubs_only(stores: list[Store], clock: Clock) -> None:
    sa, sb, _ = stores
    a, b = ClusterNode(sa, "https://a", "1", hub_id="ha"), ClusterNode(sb, "https://b", "1", hub_id="hb")
    await a.beat()
    await b.beat()
    await sa.mcp_session_add("m1", "ha")
    await sa.mcp_session_add("m2", "ha")
    assert await sb.mcp_session_hub("m1", b.ttl_s) == ("ha", "https://a")
    assert await sb.mcp_session_hub("nope", b.ttl_s) is None
    await sa.mcp_session_drop("m2")  # its client ended it (DELETE)
    assert await sb.mcp_session_hub("m2", b.ttl_s) is None
    clock.t += b.ttl_s + 1  # a dies: its sessions are not found, then swept with it
    await b.beat()
    assert await sb.mcp_session_hub("m1", b.ttl_s) is None
    assert await sb.read(lambda r: r.rows("SELECT id FROM mcp_sessions")) == []
