"""The hub's registry and box service against real spoke sessions over the in-memory pipe:
enrollment, refusal, revoke, reconcile and box verbs, in milliseconds (no sockets, no Docker).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import new_id
from spoke.boxes.base import BoxSpec
from spoke.identity import Identity, SpokeState
from tests.hub.memory_cluster import IMAGE, PIN, Fatal, MemoryCluster


async def test_a_spoke_enrolls_once_and_resumes_with_its_key(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        token = await hub.token("alpha")
        first = await hub.join("alpha", token=token)
        row = await hub.store.get_spoke("alpha")
        assert row is not None and row["connected"] == 1
        assert first.session.rt.state.enrolled
        await hub.drop("alpha")
        again = await hub.join("alpha")  # no token: the key pair proves who it is
        assert again.session.authenticated and hub.registry.live("alpha") is not None
        summaries = await hub.registry.spoke_summaries()
        assert [s["name"] for s in summaries] == ["alpha"] and summaries[0]["connected"]


async def test_a_used_token_is_refused_and_the_spoke_stops(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        token = await hub.token("beta")
        await hub.join("beta", token=token)
        (tmp_path / "spoke-gamma").mkdir()
        reused = await hub.join("gamma", token=token, wait=False)
        outcome = await reused.stopped()
        assert isinstance(outcome, Fatal) and "already been used" in str(outcome)
        (tmp_path / "spoke-theta").mkdir()
        misnamed = await hub.join("theta", token=await hub.token("beta2"), wait=False)
        outcome = await misnamed.stopped()
        assert isinstance(outcome, Fatal) and "bound to spoke name 'beta2'" in str(outcome)
        audit = [a["kind"] for a in await hub.store.recent_audit()]
        assert "spoke.rejected" in audit


async def test_revoke_closes_the_link_and_the_spoke_stops_for_good(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        spoke = await hub.join("delta")
        assert await hub.registry.revoke("delta")
        outcome = await spoke.stopped()
        assert isinstance(outcome, Fatal) and "revoked" in str(outcome)
        assert hub.registry.live("delta") is None
        again = await hub.join("delta", wait=False)
        assert isinstance(await again.stopped(), Fatal)


async def test_reconcile_reaps_unknown_boxes_and_marks_missing_ones_lost(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        spoke = await hub.join("eps")
        made = await hub.boxes.create("eps", {"image": IMAGE})
        await hub.drop("eps")
        stray = new_id("bx")
        await spoke.boxes.create(stray, BoxSpec(image=IMAGE))  # made while the hub did not look
        await spoke.boxes.destroy(made["id"])  # and the hub's box vanished meanwhile
        await hub.join("eps")
        assert [b.id for b in await spoke.boxes.list()] == []  # the stray was reaped
        row = await hub.store.get_box(made["id"])
        assert row is not None and row["state"] == "lost"


async def test_box_verbs_end_to_end_over_the_pipe(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("zeta")
        box = await hub.boxes.create("zeta", {"image": IMAGE})
        events = [e async for e in hub.boxes.exec(hub.boxes.exec_params(box["id"], {"cmd": ["sh", "-c", "echo hi; exit 3"]}))]
        assert events[0] == ("stdout", b"hi\n") and events[-1][1]["exit_code"] == 3

        async def body():  # type: ignore[no-untyped-def]
            yield b"notes"

        put = await hub.boxes.put_file(box["id"], "/workspace/n.txt", 5, 0o644, body())
        assert put["size"] == 5
        got = b"".join([c async for c in hub.boxes.get_file(box["id"], "/workspace/n.txt", 1 << 20)])
        assert got == b"notes"
        gone = await hub.boxes.destroy(box["id"])
        assert gone["removed"] is True
        with pytest.raises(RemoteError) as err:
            await hub.boxes.destroy("nope")
        assert err.value.code is ErrorCode.INVALID and "not a box id" in err.value.message
        with pytest.raises(RemoteError) as missing:
            await hub.boxes.create("nobody", {"image": IMAGE})
        assert missing.value.code is ErrorCode.NOT_FOUND


async def test_rejected_handshakes_are_throttled_and_folded(tmp_path: Path) -> None:
    """Issue 8, item 5: a brute-force client is turned away after ten rejections a minute,
    before any check, and its attempts fold into two audit rows; others are not affected."""
    async with MemoryCluster(tmp_path) as hub:
        bogus = dataclasses.replace(await hub.token("victim"), secret="not-the-secret")
        outcomes = []
        for i in range(12):
            (tmp_path / f"spoke-guess{i}").mkdir()
            guess = await hub.join(f"guess{i}", token=bogus, wait=False, remote="10.0.0.66")
            outcomes.append(await guess.stopped())
        assert all(isinstance(o, Fatal) and "join token is unknown" in str(o) for o in outcomes[:10])
        for turned_away in outcomes[10:]:  # not fatal: a real spoke there backs off and retries
            assert isinstance(turned_away, ConnectionError), turned_away
            assert "too many rejected attempts from this address; retry in 60 s" in str(turned_away)
        rows = [a for a in await hub.store.recent_audit() if a["kind"] == "spoke.rejected"]
        assert [(r["subject"], r["detail"]) for r in rows] == [("10.0.0.66", "join token is unknown")]
        await hub.join("bystander")  # another address enrolls meanwhile
        hub.clock.advance(60)
        assert await hub.registry.flush_rejections() == 1
        rows = [a for a in await hub.store.recent_audit() if a["kind"] == "spoke.rejected"]
        assert rows[0]["detail"] == ("11 more attempts rejected or turned away in 60 s "
                                     "(last: turned away: too many rejected attempts)")
        assert rows[0]["result"] == "denied x11" and len(rows) == 2
        (tmp_path / "spoke-later").mkdir()
        later = await hub.join("later", token=bogus, wait=False, remote="10.0.0.66")
        assert isinstance(await later.stopped(), Fatal), "a new window checks again"


async def test_an_unknown_name_and_a_wrong_key_get_the_same_refusal(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("known")
        await hub.drop("known")
        (tmp_path / "spoke-known" / "identity.key").unlink()  # a new key under a known name
        Identity(tmp_path / "spoke-known").key(create=True)
        impostor = await hub.join("known", wait=False)
        stranger_dir = tmp_path / "spoke-stranger"
        Identity(stranger_dir).save_state(SpokeState(hub_url="https://hub.test", pin=PIN,
                                                     name="stranger", enrolled=True))
        Identity(stranger_dir).key(create=True)
        stranger = await hub.join("stranger", wait=False)
        said = [str(await impostor.stopped()), str(await stranger.stopped())]
        assert said[0] == said[1] and "not known to this hub" in said[0], said
        assert "known" not in said[0].replace("not known", "")


async def test_a_spoke_of_another_release_is_refused_naming_both(tmp_path: Path) -> None:
    """A spoke newer than the hub's release series, or older than it supports, is refused at
    the handshake with both versions in the message, before its join token is spent."""
    async with MemoryCluster(tmp_path, hub_version="0.4.1") as hub:
        token = await hub.token("eta")
        (tmp_path / "spoke-eta").mkdir()
        newer = await hub.join("eta", token=token, wait=False, version="0.5.0")
        outcome = await newer.stopped()
        assert isinstance(outcome, Fatal)
        assert "0.5.0" in str(outcome) and "0.4.1" in str(outcome)
        assert "upgrade the hub first" in str(outcome)
        older = await hub.join("eta", token=token, wait=False, version="0.0.3")
        outcome = await older.stopped()
        assert isinstance(outcome, Fatal) and "upgrade the spoke" in str(outcome)
        assert await hub.store.get_spoke("eta") is None
        same = await hub.join("eta", token=token, version="0.4.0")  # the token is still good
        assert same.session.authenticated
        row = await hub.store.get_spoke("eta")
        assert row is not None and row["version"] == "0.4.0"
