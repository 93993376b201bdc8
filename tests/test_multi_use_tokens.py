"""Multi-use join tokens between a real hub and real spoke processes: `hub token create
--name PREFIX --uses N` enrolls up to N spokes named PREFIX-…, each `spoke join --name` (or its
hostname) picking the rest; uses are counted, listed and revocable; single-use tokens are as
they were (tests/test_enrollment.py). Without processes: tests/hub/test_token_uses.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.cluster import Hub, Spoke


def test_one_token_enrolls_up_to_n_spokes_under_its_prefix(tmp_path: Path, hub: Hub,
                                                            spokes: list[Spoke]) -> None:
    made = hub.cli_json("token", "create", "--name", "fleet", "--uses", "3", "--ttl", "10m")
    assert made["uses"] == 3 and made["prefix"] is True and made["name"] == "fleet"
    token = made["token"]
    host = socket.gethostname().split(".")[0].lower()
    joined = [Spoke(tmp_path, hub, name="fleet-a", extra=["--name", "a"]),
              Spoke(tmp_path, hub, name="fleet-b", extra=["--name", "fleet-b"])]
    if host.replace("-", "").isalnum() and host.isascii():  # a name the default can use
        joined.append(Spoke(tmp_path, hub, name=f"fleet-{host}"))
    for spoke in joined:
        spokes.append(spoke)
        spoke.join(token)
    [row] = [t for t in hub.cli_json("token", "list") if t["id"] == made["id"]]
    assert row["uses"] == 3 and row["uses_left"] == 3 - len(joined) and row["prefix"] is True
    listing = hub.cli("token", "list", check=True).stdout
    assert "USES_LEFT" in listing

    if len(joined) < 3:
        extra = Spoke(tmp_path, hub, name="fleet-c", extra=["--name", "c"])
        spokes.append(extra)
        extra.join(token)
    late = Spoke(tmp_path / "late", hub, name="fleet-d", extra=["--name", "d"])
    spokes.append(late)
    proc = late.join(token, wait=False)
    assert proc.wait() != 0 and "no uses left (all 3 taken)" in proc.output()
    [row] = [t for t in hub.cli_json("token", "list") if t["id"] == made["id"]]
    assert row["uses_left"] == 0 and row["state"] == "used"
    assert hub.connected("fleet-a") and hub.connected("fleet-b")

    # A spoke that asks for a name its single-use token does not carry is told so locally.
    single = hub.token("solo")
    wrong = Spoke(tmp_path, hub, name="solo", extra=["--name", "other"])
    proc = wrong.join(single, wait=False)
    assert proc.wait() == 2 and "enrolls spoke 'solo' only" in proc.output()


def test_a_revoked_multi_use_token_enrolls_no_more(tmp_path: Path, hub: Hub,
                                                    spokes: list[Spoke]) -> None:
    made = hub.cli_json("token", "create", "--name", "pool", "--uses", "5")
    first = Spoke(tmp_path, hub, name="pool-1", extra=["--name", "1"])
    spokes.append(first)
    first.join(made["token"])
    hub.cli("token", "revoke", made["id"], check=True)
    second = Spoke(tmp_path, hub, name="pool-2", extra=["--name", "2"])
    spokes.append(second)
    proc = second.join(made["token"], wait=False)
    assert proc.wait() != 0 and "revoked" in proc.output()
    [row] = [t for t in hub.cli_json("token", "list") if t["id"] == made["id"]]
    assert row["state"] == "revoked" and row["uses_left"] == 4
    assert hub.connected("pool-1")  # enrolled spokes are not touched by the token's revocation
    bad = hub.cli("token", "create", "--name", "x" * 60, "--uses", "2")
    assert bad.returncode != 0 and "prefix" in bad.stderr
