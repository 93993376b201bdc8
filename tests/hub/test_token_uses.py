"""Multi-use join tokens in the store, without processes: real SQLite and real PostgreSQL
(tests/hub/conftest.py), an injected clock.

Pins hub/store/tokens.py (one use taken per enrollment, atomically, even by two stores on one
database; revocation and expiry end every use left) and the token's names (protocol/tokens.py).
End to end (a real hub, real spokes): tests/test_multi_use_tokens.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hub.store import Store
from protocol.tokens import JoinToken, TokenError, name_under_prefix
from tests.hub.conftest import Clock


async def test_a_multi_use_token_is_taken_once_per_use(
    two_stores: tuple[Store, Store], clock: Clock
) -> None:
    a, b = two_stores
    await a.add_token("tok_m", "sim", "hash", ttl_s=60, uses=7)
    results = await asyncio.gather(*(s.take_token("tok_m") for s in [a, b] * 20))
    assert sorted(results) == [False] * 33 + [True] * 7
    token = await b.get_token("tok_m")
    assert token is not None and (token["uses"], token["uses_left"], token["prefix"]) == (7, 0, 1)
    assert token["used_at"] == 1000.0

    await a.add_token("tok_single", "laptop", "hash", ttl_s=60)  # unchanged: one use
    assert await a.take_token("tok_single") and not await b.take_token("tok_single")
    [row] = [t for t in await a.list_tokens() if t["id"] == "tok_single"]
    assert (row["uses"], row["uses_left"], row["prefix"]) == (1, 0, 0)

    await a.add_token("tok_r", "r", "hash", ttl_s=60, uses=5)
    assert await a.take_token("tok_r")
    assert await a.revoke_token("tok_r")
    assert not await b.take_token("tok_r")  # revoked: the 4 uses left are gone too
    await a.add_token("tok_e", "e", "hash", ttl_s=60, uses=5)
    clock.t += 61
    assert not await b.take_token("tok_e")  # expired
    [left] = [t["uses_left"] for t in await a.list_tokens() if t["id"] == "tok_r"]
    assert left == 4


def test_names_under_a_multi_use_token() -> None:
    multi = JoinToken("https://hub:8443", "", "tok_1", "s" * 43, "sim", prefix=True)
    again = JoinToken.decode(multi.encode())
    assert again.prefix and again.name == "sim"
    assert again.spoke_name(None, "Build-Box.example.org") == "sim-build-box"
    assert again.spoke_name("00001") == "sim-00001"
    assert again.spoke_name("sim-a") == "sim-a"  # already under the prefix: as given
    with pytest.raises(TokenError, match="--name"):
        again.spoke_name(None, "...")
    with pytest.raises(TokenError, match="bad spoke name"):
        again.spoke_name("Bad_Name")
    with pytest.raises(TokenError, match="bad spoke name"):
        again.spoke_name("x" * 70)
    assert name_under_prefix("sim", "sim-1") and not name_under_prefix("sim", "sim-")
    assert not name_under_prefix("sim", "simx-1") and not name_under_prefix("sim", "sim")

    single = JoinToken("https://hub:8443", "", "tok_2", "s" * 43, "laptop")
    assert not JoinToken.decode(single.encode()).prefix
    assert '"x"' not in _body(single.encode())  # single-use tokens are as they always were
    assert single.spoke_name(None, "host") == "laptop" == single.spoke_name("laptop")
    with pytest.raises(TokenError, match="only"):
        single.spoke_name("other")


def _body(token: str) -> str:
    import base64

    raw = token.split(".", 1)[1]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


async def test_the_hub_enrolls_names_under_the_prefix_one_use_each(tmp_path: Path) -> None:
    from protocol.tokens import hash_secret, new_id, new_secret
    from tests.hub.memory_cluster import PIN, Fatal, MemoryCluster

    async with MemoryCluster(tmp_path) as hub:
        token_id, secret = new_id("tok"), new_secret()
        await hub.store.add_token(token_id, "fleet", hash_secret(secret), 3600, uses=2)
        token = JoinToken("https://hub.test", PIN, token_id, secret, "fleet", prefix=True)
        await hub.join("fleet-1", token=token)
        for name, why in (("other-1", "enrolls spokes named fleet-…, not 'other-1'"),
                          ("fleet", "enrolls spokes named fleet-…")):
            (tmp_path / f"spoke-{name}").mkdir()
            refused = await hub.join(name, token=token, wait=False)
            outcome = await refused.stopped()
            assert isinstance(outcome, Fatal) and why in str(outcome)
        await hub.join("fleet-2", token=token)  # the refusals took no use
        (tmp_path / "spoke-fleet-3").mkdir()
        late = await hub.join("fleet-3", token=token, wait=False)
        outcome = await late.stopped()
        assert isinstance(outcome, Fatal) and "no uses left (all 2 taken)" in str(outcome)
        row = await hub.store.get_token(token_id)
        assert row is not None and row["uses_left"] == 0
        enrolled = [a["subject"] for a in await hub.store.recent_audit() if a["kind"] == "spoke.enrolled"]
        assert sorted(enrolled) == ["fleet-1", "fleet-2"]
