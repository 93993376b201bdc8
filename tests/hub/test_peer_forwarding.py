"""Hub-to-hub call forwarding: hub A calls a spoke whose link is on hub C, through C.

Hub C is the real registry and a real spoke session over the in-memory pipe
(tests/hub/memory_cluster.py), with :class:`hub.cluster.peer_api.PeerApi` served by aiohttp
over real TLS on 127.0.0.1, behind the hub's real error and auth middlewares; hub A is a
:class:`hub.cluster.peer_link.PeerClient` with the same certificate's pin (every hub of a
cluster serves one certificate, made here by hub/tls.py). The box manager runs real
subprocesses, so a cancelled exec is a killed process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from hub import roles
from hub.cluster import peer_frames as pf
from hub.cluster.peer_api import PeerApi
from hub.cluster.peer_link import HUB_HEADER, PREFIX, PeerClient, PeerLink, PeerStreamCall
from hub.http_util import auth_middleware, errors_middleware
from hub.openapi.build import build_spec, declarations
from hub.spoke_calls import SpokeCalls
from hub.spoke_link import SpokeLink
from hub.tls import certificate_pin, ensure_self_signed, server_context
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import new_id
from tests.hub.memory_cluster import IMAGE, MemoryCluster

SECRET = "cluster-secret-" + "k" * 32


@dataclass(frozen=True)
class Facts:
    labels: tuple[str, ...] = ("gpu",)
    models: tuple[str, ...] = ()
    max_workstreams: int = 4
    leaving: bool = False


@dataclass
class HubC:
    cluster: MemoryCluster
    url: str
    runner: web.AppRunner
    pin: str


def _cert(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    cert, key = root / "cert.pem", root / "key.pem"
    ensure_self_signed(cert, key, ["127.0.0.1"])
    return cert, key


@contextlib.asynccontextmanager
async def hub_c(tmp_path: Path, keepalive_s: float = 15.0, tls: bool = True) -> AsyncIterator[HubC]:
    """Hub C: spoke ``zeta`` linked to its registry, the peer routes served over TLS (or
    plain http, as a hub behind a TLS proxy)."""
    cert, key = _cert(tmp_path / "tls")
    (tmp_path / "c").mkdir()
    async with MemoryCluster(tmp_path / "c") as cluster:
        await cluster.join("zeta")
        app = web.Application(middlewares=[errors_middleware,
                                           auth_middleware(cluster.store, "https://hub.test")])
        app.add_routes(PeerApi(cluster.registry, lambda: SECRET, keepalive_s=keepalive_s).routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0,
                           ssl_context=server_context(cert, key) if tls else None)
        await site.start()
        url = f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
        try:
            yield HubC(cluster, url, runner, certificate_pin(cert))
        finally:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def hub_a(c: HubC, *, pin: str | None = None,
                secret: str = SECRET) -> AsyncIterator[tuple[PeerClient, PeerLink]]:
    client = PeerClient(pin or c.pin, lambda: secret, "hub-a")
    try:
        yield client, client.link("zeta", c.url, Facts())
    finally:
        await client.close()


async def _box(link: PeerLink) -> str:
    box_id = new_id("bx")
    info = await link.call(v.BOX_CREATE, v.BoxCreate(box_id=box_id, image=IMAGE))
    assert info.box_id == box_id and info.state == "running"
    return box_id


async def _raw(c: HubC, route: str, body: bytes | AsyncIterator[bytes],
               headers: dict[str, str]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{c.url}{PREFIX}/{route}", data=body, headers=headers,
            ssl=aiohttp.Fingerprint(bytes.fromhex(c.pin[7:]))) as resp:
        return resp.status, await resp.read()


def _envelope(verb: str, params: dict[str, object], spoke: str = "zeta") -> bytes:
    return pf.json_frame(pf.KIND_PARAMS, {"spoke": spoke, "verb": verb, "params": params})


GOOD = {"Authorization": f"Bearer {SECRET}", HUB_HEADER: "hub-a"}


def _static_surface(local: SpokeLink, remote: PeerLink) -> list[SpokeCalls]:
    """Never called: mypy checks here that both link classes offer the shared surface."""
    return [local, remote]


def test_both_links_offer_the_same_surface() -> None:
    for cls in (SpokeLink, PeerLink):
        for name in ("call", "call_stream", "call_upload"):
            assert asyncio.iscoroutinefunction(getattr(cls, name)), (cls, name)
    for name in ("result", "cancel"):
        assert asyncio.iscoroutinefunction(getattr(PeerStreamCall, name))
    assert isinstance(PeerLink.closed, property)


async def test_a_unary_call_and_a_typed_error_pass_through(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c, hub_a(c) as (_client, link):
        assert (link.name, link.labels, link.max_workstreams, link.closed) == (
            "zeta", ["gpu"], 4, False)
        box_id = await _box(link)
        spoke = c.cluster.spokes["zeta"]
        assert [b.id for b in await spoke.boxes.list()] == [box_id]
        info = await link.call(v.SPOKE_INFO, v.Empty())
        assert info.name == "zeta" and [b.box_id for b in info.boxes] == [box_id]
        # A refusal of the spoke comes back with its code and message, as over the local link.
        bad = v.BoxCreate(box_id=new_id("bx"), image="not-allowed:latest")
        with pytest.raises(RemoteError) as local:
            await c.cluster.registry.link("zeta").call(v.BOX_CREATE, bad)
        with pytest.raises(RemoteError) as forwarded:
            await link.call(v.BOX_CREATE, bad)
        assert (forwarded.value.code, forwarded.value.message) == (
            local.value.code, local.value.message)
        assert forwarded.value.code is ErrorCode.DENIED and not link.closed
        # The connection was pooled: one more call still works.
        assert (await link.call(v.BOX_DESTROY, v.BoxRef(box_id=box_id))).existed


async def test_an_exec_streams_its_chunks_then_its_result(tmp_path: Path) -> None:
    # keepalives every 10 ms: the quiet second half of the command is crossed by many
    async with hub_c(tmp_path, keepalive_s=0.01) as c, hub_a(c) as (_client, link):
        box_id = await _box(link)
        script = "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2; sleep 0.3; exit 3"
        call = await link.call_stream(v.BOX_EXEC, v.BoxExec(box_id=box_id,
                                                             cmd=["sh", "-c", script]))
        out: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        async for stream, data in call.chunks():
            out[stream] += data
        result = await call.result()
        assert out == {"stdout": b"".join(b"line%d\n" % i for i in range(1, 6)),
                       "stderr": b"oops\n"}
        assert result.exit_code == 3 and not result.timed_out


async def test_a_slow_reader_slows_the_spoke(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c, hub_a(c) as (_client, link):
        box_id = await _box(link)
        call = await link.call_stream(v.BOX_EXEC, v.BoxExec(box_id=box_id, cmd=[
            "sh", "-c", "echo $$ >&2; exec head -c 2000000000 /dev/zero"]))
        assert isinstance(call, PeerStreamCall)
        chunks = call.chunks()
        pid = 0
        while not pid:
            stream, data = await anext(chunks)
            pid = int(data) if stream == "stderr" else 0
        await asyncio.sleep(0.5)  # not read: 2 GB cannot have gone anywhere meanwhile
        assert call._queue.qsize() <= 16  # the read-ahead is bounded (peer_link.WINDOW_FRAMES)
        os.kill(pid, 0)  # blocked on its full pipe, not finished
        await call.cancel()


async def test_hubs_behind_a_tls_proxy_talk_plain_http(tmp_path: Path) -> None:
    async with hub_c(tmp_path, tls=False) as c:
        client = PeerClient("", lambda: SECRET, "hub-a", insecure_http=True)
        try:
            link = client.link("zeta", c.url, Facts())
            assert (await link.call(v.SPOKE_INFO, v.Empty())).name == "zeta"
            with pytest.raises(ValueError, match="no pin"):
                client.link("zeta", "https://127.0.0.1:1", Facts())
        finally:
            await client.close()


async def test_cancel_reaches_the_spoke_and_kills_the_exec(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c, hub_a(c) as (_client, link):
        box_id = await _box(link)
        call = await link.call_stream(v.BOX_EXEC, v.BoxExec(
            box_id=box_id, cmd=["sh", "-c", "echo $$; exec sleep 60"]))
        chunks = call.chunks()
        _stream, first = await anext(chunks)
        pid = int(first.decode().split()[0])
        os.kill(pid, 0)  # running
        await call.cancel()
        with pytest.raises(RemoteError) as err:
            await call.result()
        assert err.value.code is ErrorCode.CANCELLED

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        await c.cluster.until(gone, "the exec to be killed on the spoke")
        session = c.cluster.spokes["zeta"].session
        await c.cluster.until(lambda: not session.driver.tasks, "the spoke's handler to end")
        # A unary call whose caller is cancelled is cancelled on the spoke as well.
        task = asyncio.create_task(link.call(v.BOX_CREATE, v.BoxCreate(
            box_id=new_id("bx"), image=IMAGE)))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not link.closed


async def test_an_upload_of_several_mib_arrives_whole(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c, hub_a(c) as (_client, link):
        box_id = await _box(link)
        blob = os.urandom(5 * 1024 * 1024 + 123)

        async def source() -> AsyncIterator[bytes]:
            for start in range(0, len(blob), 300 * 1024):
                yield blob[start:start + 300 * 1024]

        done = await link.call_upload(v.BOX_PUT_FILE, v.PutFile(
            box_id=box_id, path="/workspace/blob.bin", size=len(blob)), source())
        assert done.size == len(blob) and done.path == "/workspace/blob.bin"
        call = await link.call_stream(v.BOX_GET_FILE, v.GetFile(
            box_id=box_id, path="/workspace/blob.bin"))
        back = b"".join([data async for _stream, data in call.chunks()])
        assert back == blob and (await call.result()).size == len(blob)


async def test_a_broken_upload_source_fails_with_its_own_error(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c, hub_a(c) as (_client, link):
        box_id = await _box(link)

        session = c.cluster.spokes["zeta"].session

        async def source() -> AsyncIterator[bytes]:
            yield b"x" * 1024
            await c.cluster.until(lambda: len(session.driver.tasks) == 1, "the handler to run")
            raise ConnectionResetError("the uploading client went away")

        with pytest.raises(ConnectionResetError, match="went away"):
            await link.call_upload(v.BOX_PUT_FILE, v.PutFile(
                box_id=box_id, path="/workspace/half.bin", size=4096), source())
        # The spoke's handler is cancelled (not left waiting for the rest until its deadline),
        # nothing half-written remains, and the link still works.
        await c.cluster.until(lambda: not session.driver.tasks, "the handler to be cancelled")
        workspace = c.cluster.spokes["zeta"].boxes._box(box_id).workspace
        await c.cluster.until(lambda: not list(workspace.iterdir()), "the temp file to go")
        with pytest.raises(RemoteError) as err:
            await link.call(v.BOX_STATS, v.BoxRef(box_id=new_id("bx")))
        assert err.value.code is ErrorCode.NOT_FOUND


async def test_a_wrong_secret_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c, hub_a(c, secret="wrong") as (_client, link):
        with pytest.raises(RemoteError) as err:
            await link.call(v.BOX_CREATE, v.BoxCreate(box_id=new_id("bx"), image=IMAGE))
        assert err.value.code is ErrorCode.UNAVAILABLE and "cluster secret" in err.value.message
        assert not link.closed  # a misconfiguration, not a moved spoke: no re-attach waits
        assert await c.cluster.spokes["zeta"].boxes.list() == []
        body = _envelope("box.create", {"box_id": new_id("bx"), "image": IMAGE})
        for headers in ({}, {HUB_HEADER: "hub-a"}, {"Authorization": "Bearer wrong"},
                        {"Authorization": f"Basic {SECRET}", HUB_HEADER: "hub-a"}):
            status, _ = await _raw(c, "call", body, headers)
            assert status == 401
        assert await c.cluster.spokes["zeta"].boxes.list() == []


async def test_a_wrong_certificate_pin_is_a_clear_error(tmp_path: Path) -> None:
    other, _key = _cert(tmp_path / "other-tls")
    async with hub_c(tmp_path) as c, hub_a(c, pin=certificate_pin(other)) as (_client, link):
        with pytest.raises(RemoteError) as err:
            await link.call(v.SPOKE_PING, v.Empty())
        assert err.value.code is ErrorCode.UNAVAILABLE
        assert certificate_pin(other) in err.value.message and c.pin in err.value.message
        assert "refusing to talk to it" in err.value.message
        with pytest.raises(ValueError, match="https"):
            PeerClient(c.pin, lambda: SECRET, "hub-a").link("zeta", "http://127.0.0.1:1", Facts())
        with pytest.raises(ValueError, match="pin"):
            PeerClient("sha256:abc", lambda: SECRET, "hub-a")


async def test_a_peer_gone_or_without_the_spoke_is_unavailable(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c, hub_a(c) as (client, link):
        elsewhere = client.link("omega", c.url, Facts())  # C does not hold omega
        with pytest.raises(RemoteError) as err:
            await elsewhere.call(v.SPOKE_PING, v.Empty())
        assert err.value.code is ErrorCode.UNAVAILABLE and elsewhere.closed
        assert err.value.message.startswith("spoke 'omega' is not connected (its hub")
        # A stream whose spoke drops on C ends unavailable, and the link says it is closed:
        # what the box service's re-attach waits on.
        box_id = await _box(link)
        call = await link.call_stream(v.BOX_EXEC, v.BoxExec(
            box_id=box_id, cmd=["sh", "-c", "echo up; exec sleep 60"]))
        chunks = call.chunks()
        assert (await anext(chunks))[1] == b"up\n"
        await c.cluster.drop("zeta")
        with pytest.raises(RemoteError) as err:
            await call.result()
        assert err.value.code is ErrorCode.UNAVAILABLE and link.closed
        # A peer that is not there at all.
        await c.runner.cleanup()
        fresh = client.link("zeta", c.url, Facts())
        with pytest.raises(RemoteError) as err:
            await fresh.call(v.SPOKE_PING, v.Empty())
        assert err.value.code is ErrorCode.UNAVAILABLE and fresh.closed
        assert "cannot be reached" in err.value.message
        with pytest.raises(RemoteError, match="no longer holds it"):
            await fresh.call(v.SPOKE_PING, v.Empty())


MALFORMED: list[tuple[str, bytes, str]] = [
    ("call", b"not frames", "malformed body"),
    ("call", b"", "must start with a params frame"),
    ("call", pf.json_frame(pf.KIND_PARAMS, {"spoke": "zeta"})[:9], "ends inside a frame"),
    ("call", struct.pack(">BBI", pf.KIND_PARAMS, 0, 1 << 30), "at most"),
    ("call", pf.HEADER.pack(pf.KIND_PARAMS, 0, 2) + b"[]", "must be a JSON object"),
    ("call", _envelope("box.explode", {}), "not on the allowlist"),
    ("call", _envelope("box.exec", {"box_id": "bx_0123456789abcdef", "cmd": ["true"]}),
     "does not go to the call route"),
    ("stream", _envelope("box.create", {"image": IMAGE}), "does not go to the stream route"),
    ("call", _envelope("box.create", {"image": IMAGE}), "box_id"),
    ("call", _envelope("spoke.ping", {}, spoke="Not A Name"), "spoke name"),
]


async def test_malformed_bodies_are_a_400_and_run_nothing(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c:
        for route, body, needle in MALFORMED:
            status, answer = await _raw(c, route, body, GOOD)
            assert status == 400 and needle in answer.decode(), (needle, answer)
        assert await c.cluster.spokes["zeta"].boxes.list() == []


async def test_an_upload_body_without_its_end_frame_is_refused(tmp_path: Path) -> None:
    async with hub_c(tmp_path) as c, hub_a(c) as (_client, link):
        box_id = await _box(link)
        body = (_envelope("box.put_file", {"box_id": box_id, "path": "/workspace/f", "size": 9})
                + pf.chunk_header("stdin", 3) + b"abc")
        session = c.cluster.spokes["zeta"].session

        async def cut() -> AsyncIterator[bytes]:
            yield body
            await c.cluster.until(lambda: len(session.driver.tasks) == 1, "the handler to run")
            # ...and the body ends here, without its end frame

        status, answer = await _raw(c, "upload", cut(), GOOD)
        assert status == 200 and b"before its end frame" in answer
        await c.cluster.until(lambda: not session.driver.tasks, "the handler to be cancelled")
        missing_hub = {"Authorization": f"Bearer {SECRET}"}
        status, answer = await _raw(c, "upload", body, missing_hub)
        assert status == 400 and HUB_HEADER.encode() in answer


async def test_the_peer_routes_are_internal(tmp_path: Path) -> None:
    app = web.Application()
    app.add_routes(PeerApi(object(), lambda: SECRET).routes())  # type: ignore[arg-type]
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert paths == {f"{PREFIX}/call", f"{PREFIX}/stream", f"{PREFIX}/upload"}
    assert {roles.rule_for("POST", p) for p in paths} == {roles.PEER}
    assert declarations(app)[1] == [] and build_spec(app)["paths"] == {}
    # A handler under the prefix that does not check the secret is refused by the middleware.
    async with MemoryCluster(tmp_path) as cluster:
        async def unguarded(request: web.Request) -> web.Response:
            return web.Response(text="leaked")

        bare = web.Application(middlewares=[errors_middleware,
                                            auth_middleware(cluster.store, "https://hub.test")])
        bare.router.add_post(f"{PREFIX}/other", unguarded)
        runner = web.AppRunner(bare, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with aiohttp.ClientSession() as http, http.post(
                    f"http://127.0.0.1:{runner.addresses[0][1]}{PREFIX}/other",
                    headers=GOOD) as resp:
                assert resp.status == 401 and "leaked" not in await resp.text()
        finally:
            await runner.cleanup()
