"""The spoke's file verbs (spoke/dispatcher.py) over the real Docker manager: a cap on
concurrent transfers (``busy`` beyond it), the declared-size checks as typed errors, and the
policy's say on users and workspace sizes. Only the link is a stand-in (``StubIO``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from spoke.boxes.docker_boxes import DockerBoxManager
from spoke.dispatcher import Dispatcher
from spoke.policy import Policy
from tests.boxes.helpers import new_box_id, run

pytestmark = pytest.mark.timeout(120)


class StubIO:
    """One call's streams: an upload to hand out, downloads kept (sends wait on ``gate``)."""

    def __init__(self, upload: list[bytes] | None = None) -> None:
        self.chunks = upload or []
        self.sent: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    link_lost = False

    async def send(self, stream: str, data: bytes, eof: bool = False) -> None:
        self.started.set()
        await self.gate.wait()
        self.sent.append(data)

    async def upload(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


@pytest.fixture
def dispatcher(docker_manager: DockerBoxManager, box_image: str) -> Dispatcher:
    policy = Policy(allowed_images=(box_image,), max_transfers=1, max_file_bytes=1024 * 1024,
                    max_workspace_bytes=256 * 1024 * 1024)
    return Dispatcher("test", "0", docker_manager, policy, chunk_bytes=64 * 1024)


async def _box(dispatcher: Dispatcher, box_image: str, **fields: Any) -> str:
    box_id = new_box_id()
    await dispatcher.dispatch("box.create", v.BoxCreate(box_id=box_id, image=box_image, **fields), StubIO())
    return box_id


async def test_transfers_beyond_the_cap_are_busy(dispatcher: Dispatcher, box_image: str) -> None:
    box = await _box(dispatcher, box_image)
    data = b"x" * 300_000
    await dispatcher.dispatch("box.put_file", v.PutFile(box_id=box, path="f", size=len(data)),
                                  StubIO([data]))
    slow = StubIO()
    slow.gate.clear()
    first = asyncio.create_task(dispatcher.dispatch("box.get_file", v.GetFile(box_id=box, path="f"), slow))
    await asyncio.wait_for(slow.started.wait(), 30)
    with pytest.raises(RemoteError) as busy:
        await dispatcher.dispatch("box.get_file", v.GetFile(box_id=box, path="f"), StubIO())
    assert busy.value.code == ErrorCode.BUSY and "limit 1" in busy.value.message
    with pytest.raises(RemoteError) as busy_put:
        await dispatcher.dispatch("box.put_file", v.PutFile(box_id=box, path="g", size=1), StubIO([b"y"]))
    assert busy_put.value.code == ErrorCode.BUSY
    slow.gate.set()
    done = await asyncio.wait_for(first, 30)
    assert isinstance(done, v.FileDone)
    assert (done.size, done.path, b"".join(slow.sent)) == (len(data), "/workspace/f", data)
    again = await dispatcher.dispatch("box.get_file", v.GetFile(box_id=box, path="f"), StubIO())
    assert isinstance(again, v.FileDone) and again.size == len(data)  # the slot is free again


async def test_declared_sizes_are_checked(dispatcher: Dispatcher, box_image: str) -> None:
    box = await _box(dispatcher, box_image)
    with pytest.raises(RemoteError) as short:
        await dispatcher.dispatch("box.put_file", v.PutFile(box_id=box, path="s", size=10), StubIO([b"12345"]))
    assert short.value.code == ErrorCode.INVALID and "ended after 5 of 10" in short.value.message
    with pytest.raises(RemoteError) as long:
        await dispatcher.dispatch("box.put_file", v.PutFile(box_id=box, path="l", size=3), StubIO([b"12345"]))
    assert long.value.code == ErrorCode.INVALID and "longer than the declared 3" in long.value.message
    policy = dispatcher.policy
    with pytest.raises(RemoteError) as big:
        await dispatcher.dispatch("box.put_file",
            v.PutFile(box_id=box, path="b", size=policy.max_file_bytes + 1), StubIO())
    assert big.value.code == ErrorCode.DENIED


async def test_the_policy_decides_users_and_workspace_sizes(
    dispatcher: Dispatcher, box_image: str
) -> None:
    with pytest.raises(RemoteError) as root:
        await _box(dispatcher, box_image, user="0")
    assert root.value.code == ErrorCode.DENIED and "--allow-root" in root.value.message
    with pytest.raises(RemoteError) as over:
        await _box(dispatcher, box_image, workspace_bytes=512 * 1024 * 1024)
    assert over.value.code == ErrorCode.DENIED and "ceiling" in over.value.message
    box = await _box(dispatcher, box_image)  # the default 1 GiB, capped at the ceiling
    out, _, _ = await run(dispatcher.boxes, box, ["df", "-B1", "--output=size", "/workspace"])
    assert 200 * 1024 * 1024 < int(out.split()[-1]) <= 256 * 1024 * 1024
    info = (await dispatcher.spoke_info(v.Empty(), StubIO())).policy
    assert (info["allow_root"], info["max_workspace_bytes"], info["max_transfers"]) == \
        (False, 256 * 1024 * 1024, 1)
