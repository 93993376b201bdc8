"""The simulator's parts without a hub: the in-memory box manager (spoke/sim/boxes.py), the
key seed and saved names (spoke/sim/identity.py), source addresses and ordered delays
(spoke/sim/net.py), and percentiles (spoke/sim/load.py). End to end: tests/sim/test_spoke_sim.py.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from protocol.tokens import JoinToken
from spoke.boxes.base import BoxInvalid, BoxNotFound, BoxSpec, one_chunk, read_all
from spoke.identity import SpokeState
from spoke.sim.boxes import SimBoxManager, SimLatency
from spoke.sim.identity import FleetState, SimIdentity, SimStateError
from spoke.sim.load import percentile
from spoke.sim.net import _Delayed, source_for

BOX = "bx_0123456789abcdef"


async def run(manager: SimBoxManager, cmd: list[str], timeout: float | None = None
              ) -> tuple[int, bytes, bytes, bool]:
    handle = await manager.exec(BOX, cmd, timeout=timeout)
    out, err = b"", b""
    async for stream, data in handle.chunks():
        if stream == "stdout":
            out += data
        else:
            err += data
    result = await handle.wait()
    return result.exit_code, out, err, result.timed_out


async def test_sim_boxes_answer_the_box_verbs_from_memory() -> None:
    manager = SimBoxManager("sim-00001", SimLatency(create_s=0.01, exec_s=0.01))
    info = await manager.create(BOX, BoxSpec(image="spokehub-sim"))
    assert (await manager.create(BOX, BoxSpec(image="spokehub-sim"))) is info  # idempotent
    assert [b.id for b in await manager.list()] == [BOX]
    assert await run(manager, ["echo", "hello", "sim"]) == (0, b"hello sim\n", b"", False)
    assert (await run(manager, ["false"]))[0] == 1
    assert (await run(manager, ["whatever", "--flag"]))[1].startswith(b"simulated: whatever")
    written = await manager.put_file(BOX, "notes/a.txt", one_chunk(b"abc"), 3, parents=True)
    assert written == "/workspace/notes/a.txt"
    assert await read_all(manager.get_file(BOX, "/workspace/notes/a.txt", 100)) == b"abc"
    assert await run(manager, ["cat", "notes/a.txt"]) == (0, b"abc", b"", False)
    code, _out, err, _t = await run(manager, ["cat", "missing"])
    assert code == 1 and b"No such file" in err
    with pytest.raises(BoxNotFound):
        await read_all(manager.get_file(BOX, "/workspace/missing", 100))
    with pytest.raises(BoxInvalid):
        await manager.put_file(BOX, "/workspace/x", one_chunk(b"toolong"), 3)
    code, _out, _err, timed_out = await run(manager, ["sleep", "30"], timeout=0.2)
    assert timed_out and code == 137
    handle = await manager.exec(BOX, ["sleep", "30"])
    assert await manager.destroy(BOX) and not await manager.destroy(BOX)
    result = await asyncio.wait_for(handle.wait(), 10)
    assert result.cancelled and result.exit_code == 137
    with pytest.raises(BoxNotFound):
        await manager.exec(BOX, ["true"])
    await manager.create(BOX, BoxSpec(image="spokehub-sim"))
    assert await manager.reap(keep=set()) == [BOX]
    await manager.close()


def test_identities_come_from_one_seed_and_enrolled_names_are_saved(tmp_path: Path) -> None:
    token = JoinToken("https://127.0.0.1:1", "", "tok_1", "s" * 43, "sim", prefix=True)
    state = FleetState.load_or_create(tmp_path, token)
    a, b = SimIdentity(tmp_path, state, "sim-00001"), SimIdentity(tmp_path, state, "sim-00002")
    assert a.public_b64(a.key()) != b.public_b64(b.key())
    a.save_state(SpokeState(state.hub_url, state.pin, "sim-00001", enrolled=True))
    assert state.dirty and state.enrolled == {"sim-00001"}
    state.save(tmp_path)
    assert stat.S_IMODE((tmp_path / "sim.json").stat().st_mode) == 0o600
    again = FleetState.load_or_create(tmp_path, None)  # resumes: no token needed
    assert again.enrolled == {"sim-00001"} and again.spoke_state("sim-00001").enrolled
    same = SimIdentity(tmp_path, again, "sim-00001")
    assert same.public_b64(same.key()) == a.public_b64(a.key())
    other = JoinToken("https://127.0.0.1:2", "", "tok_2", "s" * 43, "sim", prefix=True)
    with pytest.raises(SimStateError, match="another --data-dir"):
        FleetState.load_or_create(tmp_path, other)
    with pytest.raises(SimStateError, match="multi-use"):
        FleetState.load_or_create(tmp_path, JoinToken("https://h:1", "", "t", "s", "one"))
    with pytest.raises(SimStateError, match="give --token"):
        FleetState.load_or_create(tmp_path / "empty", None)


def test_source_addresses_and_percentiles() -> None:
    assert [source_for(i, 200) for i in (0, 199, 200, 250 * 200)] == [
        "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.1.2"]
    assert percentile([], 0.5) == 0.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0, 99.0, 100.0)


async def test_delayed_callbacks_keep_their_order() -> None:
    loop = asyncio.get_running_loop()
    delayed, seen = _Delayed(loop), []
    delayed.add(0.05, lambda: seen.append(1))
    delayed.add(0.0, lambda: seen.append(2))  # queued later: never overtakes
    delayed.add(0.01, lambda: seen.append(3))
    await asyncio.sleep(0.2)
    assert seen == [1, 2, 3]
