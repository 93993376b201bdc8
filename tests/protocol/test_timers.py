"""Deadlines, staleness and heartbeats on the fake clock; connection loss."""

from __future__ import annotations

import pytest

from protocol import events as ev
from protocol import messages
from protocol.connection import Limits, State
from protocol.errors import ErrorCode, RemoteError
from protocol.verbs import VERBS
from tests.protocol.helpers import BOX, frames, new_pair, open_pair


def _failures(events: list[ev.Event]) -> list[ev.CallFailed]:
    return [e for e in events if isinstance(e, ev.CallFailed)]


def test_call_fails_with_timeout_once_its_deadline_passes() -> None:
    limits = Limits(deadline_grace_s=1.0, stale_after_s=1000.0)
    pair = open_pair(limits)
    call_id, _ = pair.call("box.list", {}, timeout_s=5.0)
    pair.clock.advance(5.9)  # timeout + grace not reached yet
    assert pair.hub.check_timers() == []
    assert frames(pair.hub) == []
    pair.clock.advance(0.1)
    (failed,) = pair.hub.check_timers()
    assert isinstance(failed, ev.CallFailed) and failed.call_id == call_id
    assert failed.error.code is ErrorCode.TIMEOUT
    assert "box.list" in failed.error.message and "deadline" in failed.error.message
    assert pair.hub.in_flight() == 0
    assert pair.hub.check_timers() == []  # failed exactly once


def test_deadline_tells_the_spoke_to_cancel() -> None:
    pair = open_pair(Limits(deadline_grace_s=0.0, stale_after_s=1000.0))
    call_id, _ = pair.call("box.exec", {"box_id": BOX, "cmd": ["sleep", "99"]}, timeout_s=1.0)
    pair.clock.advance(1.0)
    assert len(_failures(pair.hub.check_timers())) == 1
    (cancel,) = frames(pair.hub)
    assert cancel["method"] == "$/cancel" and cancel["params"] == {"id": call_id}


def test_default_deadline_is_verb_timeout_plus_grace() -> None:
    limits = Limits(deadline_grace_s=5.0, stale_after_s=10_000.0)
    pair = open_pair(limits)
    pair.hub.send_request("spoke.ping", {})
    frames(pair.hub)
    budget = VERBS["spoke.ping"].default_timeout_s + 5.0
    pair.clock.advance(budget - 0.01)
    assert _failures(pair.hub.check_timers()) == []
    pair.clock.advance(0.01)
    assert len(_failures(pair.hub.check_timers())) == 1


def test_late_result_after_deadline_is_ignored() -> None:
    pair = open_pair(Limits(deadline_grace_s=0.0, stale_after_s=1000.0))
    call_id, _ = pair.call("box.destroy", {"box_id": BOX}, timeout_s=1.0)
    pair.clock.advance(2.0)
    assert len(_failures(pair.hub.check_timers())) == 1
    (cancelled,) = pair.to_spoke()
    assert cancelled == ev.CancelReceived(call_id)
    pair.spoke.send_result(call_id, {"existed": True})  # the spoke finished anyway
    assert pair.to_hub() == []
    pair.spoke.send_error(call_id, RemoteError(ErrorCode.CANCELLED, "x"))
    assert pair.to_hub() == []
    assert frames(pair.hub) == [] and pair.hub.in_flight() == 0


def test_only_the_expired_call_fails() -> None:
    pair = open_pair(Limits(deadline_grace_s=0.0, stale_after_s=1000.0))
    short, _ = pair.call("spoke.ping", {}, timeout_s=1.0)
    long, _ = pair.call("spoke.ping", {}, timeout_s=10.0)
    pair.clock.advance(5.0)
    assert [f.call_id for f in _failures(pair.hub.check_timers())] == [short]
    pair.spoke.send_result(long, {})
    (resp,) = pair.to_hub()
    assert isinstance(resp, ev.ResponseReceived) and resp.call_id == long


def test_peer_goes_stale_after_silence() -> None:
    pair = open_pair(Limits(stale_after_s=10.0))
    pair.clock.advance(10.0)
    assert pair.hub.check_timers() == []  # exactly at the limit: not yet
    pair.clock.advance(0.5)
    (stale,) = pair.hub.check_timers()
    assert isinstance(stale, ev.PeerStale)
    assert stale.silent_for == pytest.approx(10.5)
    (again,) = pair.spoke.check_timers()
    assert isinstance(again, ev.PeerStale)


def test_heartbeats_keep_the_peer_fresh() -> None:
    limits = Limits(heartbeat_s=3.0, stale_after_s=10.0)
    pair = open_pair(limits)
    for _ in range(10):  # 30 s of beats every heartbeat_s
        pair.clock.advance(limits.heartbeat_s)
        pair.spoke.notify("spoke.heartbeat", messages.SpokeHeartbeat(boxes=1))
        pair.hub.notify("hub.heartbeat", messages.HubHeartbeat())
        assert [type(e) for e in pair.to_hub()] == [ev.NotificationReceived]
        assert [type(e) for e in pair.to_spoke()] == [ev.NotificationReceived]
        assert pair.hub.check_timers() == []
        assert pair.spoke.check_timers() == []
    pair.clock.advance(10.1)  # beats stop
    assert [type(e) for e in pair.hub.check_timers()] == [ev.PeerStale]


def test_any_received_frame_counts_as_life() -> None:
    pair = open_pair(Limits(stale_after_s=10.0))
    pair.clock.advance(9.0)
    pair.hub.receive_data("junk")  # even a bad frame proves the peer is there
    frames(pair.hub)
    pair.clock.advance(9.0)
    assert pair.hub.check_timers() == []


def test_check_timers_queues_no_frames_by_itself() -> None:
    """Heartbeats are the I/O layer's job (via notify); timers only report and cancel."""
    pair = open_pair(Limits(heartbeat_s=1.0, stale_after_s=5.0))
    for _ in range(10):
        pair.clock.advance(1.0)
        pair.hub.check_timers()
        pair.spoke.check_timers()
    assert frames(pair.hub) == [] and frames(pair.spoke) == []


def test_staleness_is_not_reported_during_handshake() -> None:
    pair = new_pair(Limits(stale_after_s=1.0, handshake_timeout_s=10.0))
    pair.clock.advance(5.0)
    assert pair.hub.check_timers() == [] and pair.spoke.check_timers() == []


def test_connection_lost_fails_every_call_in_flight() -> None:
    pair = open_pair()
    ids = [pair.call("spoke.ping", {})[0] for _ in range(3)]
    failed = pair.hub.connection_lost("socket reset")
    assert sorted(f.call_id for f in _failures(failed)) == ids
    assert len(failed) == 3
    for f in _failures(failed):
        assert f.error.code is ErrorCode.UNAVAILABLE
        assert "socket reset" in f.error.message and "spoke.ping" in f.error.message
    assert pair.hub.state is State.CLOSED and pair.hub.in_flight() == 0
    assert pair.hub.connection_lost("again") == []
    pair.clock.advance(10_000.0)
    assert pair.hub.check_timers() == []  # nothing left to time out
    with pytest.raises(RemoteError) as err:
        pair.hub.send_request("spoke.ping", {})
    assert err.value.code is ErrorCode.UNAVAILABLE
    pair.spoke.send_result(ids[0], {})
    assert pair.to_hub() == []  # a reply that still arrives finds nothing


def test_connection_lost_on_spoke_forgets_incoming_calls() -> None:
    pair = open_pair()
    call_id, _ = pair.call("box.exec", {"box_id": BOX, "cmd": ["true"]})
    assert pair.spoke.connection_lost("hub went away") == []
    assert pair.spoke.in_flight() == 0 and pair.spoke.state is State.CLOSED
    pair.spoke.send_result(call_id, {"exit_code": 0})
    assert pair.spoke.send_chunk(call_id, "stdout", b"x") is False
    assert frames(pair.spoke) == []
