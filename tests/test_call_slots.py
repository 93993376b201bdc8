"""Call slots per class (issue 8, item 3): a flood of cheap control calls must not starve
real work on the same spoke, and the other way round.

256 concurrent ``POST /api/spokes/X/ping`` used to take every call slot of the link, and an
exec on that spoke failed with "calls already in flight (busy)".
"""

from __future__ import annotations

import threading
from typing import Any

from protocol import verbs as v
from protocol.connection import Limits
from tests.cluster import Hub, Spoke
from tests.protocol.helpers import BOX, open_pair


def test_each_class_keeps_its_reserved_slots() -> None:
    pair = open_pair(Limits(max_calls=8, reserved_per_class=2))
    for _ in range(6):
        pair.hub.send_request(v.SPOKE_PING, v.Empty())
    assert not pair.hub.can_send(v.SPOKE_PING), "control may use 8 - 2 slots"
    assert pair.hub.can_send(v.BOX_EXEC), "work keeps its 2"
    pair.hub.send_request(v.BOX_EXEC, v.BoxExec(box_id=BOX, cmd=["true"]))
    pair.hub.send_request(v.BOX_EXEC, v.BoxExec(box_id=BOX, cmd=["true"]))
    assert not pair.hub.can_send(v.BOX_EXEC)  # the total is reached
    pair.to_spoke()
    assert pair.spoke.in_flight() == 8  # the spoke admits by the same rule


def test_a_ping_flood_does_not_starve_an_exec(hub: Hub, spoke: Spoke) -> None:
    box = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", "spokehub-sandbox:bookworm")
    flood: dict[str, Any] = {}

    def ping() -> None:
        flood["result"] = hub.client().request(
            "POST", f"/api/spokes/{spoke.name}/ping", {"count": 20000, "concurrency": 256})

    thread = threading.Thread(target=ping)
    thread.start()
    try:
        for _ in range(5):
            res = hub.cli("box", "exec", box["id"], "--", "echo", "work goes on")
            assert res.returncode == 0 and res.stdout == "work goes on\n", res.stderr
    finally:
        thread.join(120)
    assert flood["result"]["count"] == 20000  # and every ping got its answer: none refused
