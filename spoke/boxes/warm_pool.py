"""Warm pools: ready boxes per image, so ``box.create`` claims one instead of making one.

Why (issue 14): a cold create makes a workspace, creates and starts a container — a few
hundred milliseconds. ``spoke join --warm IMAGE=N`` keeps N ready boxes of IMAGE, and a
compatible create takes one in a few Engine calls.

A pool box is a real box, made through the manager's own ``_create`` (same hardening, same
main process, an empty workspace of the spoke's default size owned by the image's default
user, the policy's default limits), with two differences:

- it carries :data:`~spoke.boxes.docker_util.LABEL_POOL` (a fingerprint of the template it
  was made from) and a random pool id as its box label, which also names its workspace;
- where the policy allows networks it is made on the spoke's box network (inter-container
  traffic off, :mod:`~spoke.boxes.docker_network`) and disconnected before anything runs in
  it as a user's box: Docker refuses to connect a container made with network ``none``,
  while a disconnected one has only ``lo`` — the same isolation — and can be connected when
  a claim asks for a network.

A claim (:meth:`WarmPool.claim`) renames the container to the hub's box name. Docker's rename
is atomic and fails if the name is taken, so a pool box is never handed out twice, even by
two processes; labels are immutable, so a claimed box's id is read from its name
(:func:`~spoke.boxes.docker_util.box_id_of`) and its workspace keeps its pool name
(:func:`~spoke.boxes.docker_util.workspace_key`, removed by ``destroy``). Then the request
is applied: limits by a container update (memory and swap, CPUs, pids), the network by a
connect, and the environment per exec, from a small record in the spoke's workspace
directory that survives a restart (:class:`ClaimRecords`, which also keeps the claim time as
the box's creation time). Unclaimed pool boxes are not boxes of the hub's: ``list()`` hides
them and the reap keeps them; they do count against ``--max-boxes`` (the refill stops at
the ceiling and a cold create evicts one, :meth:`WarmPool.make_room`). A spoke restart adopts
its running pool boxes made from the same template and removes the others.

Pinned by tests/boxes/test_warm_pool.py and, through a real hub and spoke,
tests/boxes/test_warm_pool.py::test_warm_create_through_the_hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker.errors

from spoke.boxes import docker_util as du
from spoke.boxes.base import BoxError, BoxInfo, BoxSpec

if TYPE_CHECKING:
    from spoke.boxes.docker_boxes import DockerBoxManager
    from spoke.policy import Policy

log = logging.getLogger(__name__)

MAX_WARM = 64  # per image: more would be a fleet, not a pool
REFILL_CONCURRENCY = 2  # pool boxes made at once (a cold create is disk and CPU heavy)
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0
STOP_WAIT_S = 60.0
ROOM_POLL_S = 10.0  # at --max-boxes, how often the refill looks for room (besides destroys)  # a stopping spoke lets pool boxes being made finish, at most this long


def parse_warm(text: str) -> tuple[str, int]:
    """``IMAGE=N`` (``spoke join --warm``) → ``(IMAGE, N)``; :class:`ValueError` says why not.
    Pinned by tests/boxes/test_warm_pool.py::test_warm_option_syntax."""
    image, sep, count = str(text).rpartition("=")
    if not sep or not image or any(c.isspace() for c in image):
        raise ValueError(f"--warm expects IMAGE=N (e.g. --warm python:3.12=2), got {text!r}")
    try:
        n = int(count)
    except ValueError:
        raise ValueError(f"--warm {text}: N must be a whole number, got {count!r}") from None
    if not 0 <= n <= MAX_WARM:
        raise ValueError(f"--warm {text}: N must be between 0 and {MAX_WARM}")
    return image, n


def pool_template(policy: Policy) -> BoxSpec:
    """What a pool box is made with: what a create asking for nothing gets on this spoke
    (the policy's default limits and workspace size), on a network it can later join if the
    policy allows networks. Its image is set per pool."""
    return BoxSpec(image="", network=policy.allow_network,
                   memory_bytes=min(policy.default_memory_bytes, policy.max_memory_bytes),
                   cpus=min(policy.default_cpus, policy.max_cpus),
                   pids=min(policy.default_pids, policy.max_pids),
                   workspace_bytes=min(policy.default_workspace_bytes,
                                       policy.max_workspace_bytes))


class ClaimRecords:
    """What a claimed pool box's labels cannot say: its environment (applied to every exec)
    and its claim time (its ``created_at``). One JSON file per box, ``<box id>.claim`` in the
    spoke's workspace directory (mode 0600), cached in memory; cold boxes have none."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, dict[str, Any]] = {}

    def _path(self, box_id: str) -> Path:
        return self.directory / f"{box_id}.claim"

    async def record(self, box_id: str, pool_id: str, env: dict[str, str]) -> dict[str, Any]:
        doc = {"pool_id": pool_id, "env": dict(env), "created_at": round(time.time(), 3)}

        def write() -> None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            temp = self._path(box_id).with_suffix(".claim-tmp")
            temp.write_text(json.dumps(doc))
            temp.chmod(0o600)
            temp.replace(self._path(box_id))

        await asyncio.to_thread(write)
        self._cache[box_id] = doc
        return doc

    async def load(self, box_id: str) -> dict[str, Any]:
        """The box's record ({} for a box that was not claimed from a pool)."""
        if box_id not in self._cache:
            def read() -> dict[str, Any]:
                try:
                    found = json.loads(self._path(box_id).read_text())
                except (OSError, ValueError):
                    return {}
                return found if isinstance(found, dict) else {}

            self._cache[box_id] = await asyncio.to_thread(read)
        return self._cache[box_id]

    async def env_for(self, box_id: str, env: dict[str, str] | None) -> dict[str, str] | None:
        """An exec's environment: the box's (from its create), overridden by the exec's."""
        base = (await self.load(box_id)).get("env") or {}
        return {**base, **(env or {})} if base else env

    async def dated(self, info: BoxInfo) -> BoxInfo:
        created = (await self.load(info.id)).get("created_at") if info.id else None
        return replace(info, created_at=float(created)) if created else info

    async def forget(self, box_id: str) -> None:
        self._cache.pop(box_id, None)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(box_id).unlink)

    async def reap(self, existing: set[str]) -> None:
        """Drop the records of boxes that no longer exist (a crash between two removals)."""
        def stale() -> list[str]:
            try:
                return [p.stem for p in self.directory.glob("*.claim") if p.stem not in existing]
            except OSError:
                return []

        for box_id in await asyncio.to_thread(stale):
            await self.forget(box_id)


@dataclass
class _Pool:
    target: int
    ready: deque[str] = field(default_factory=deque)  # pool ids, oldest first
    making: int = 0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None


class WarmPool:
    """The warm pools of one manager (see the module docstring). ``template`` is what a
    create with no options gets on this spoke (the policy's defaults); its image is unused."""

    def __init__(self, manager: DockerBoxManager, targets: dict[str, int], *, max_boxes: int,
                 template: BoxSpec) -> None:
        self.mgr, self.max_boxes = manager, max_boxes
        self.template = replace(template, user=None, env={}, require_workspace_limit=False,
                                allow_root=False)
        self.pools = {image: _Pool(target=n) for image, n in targets.items()}
        t = self.template
        self.fingerprint = (f"m{t.memory_bytes}-c{t.cpus:g}-p{t.pids}-w{t.workspace_bytes}"
                            f"-n{int(t.network)}-r{manager.runtime or ''}")
        self._limited = False  # whether pool workspaces are size-limited (probed at start)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._fills: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(REFILL_CONCURRENCY)
        self._reserved = 0  # cold creates in progress (room())

    # ------------------------------------------------------------------ status
    def total(self) -> int:
        """Pool boxes ready or being made: they count against ``--max-boxes``."""
        return sum(len(p.ready) + p.making for p in self.pools.values())

    def status(self) -> dict[str, str]:
        """``{image: "ready/target"}`` (``spoke.info`` capacity, the startup message)."""
        return {image: f"{len(p.ready)}/{p.target}" for image, p in self.pools.items()}

    def compatible(self, spec: BoxSpec) -> bool:
        """Whether a pool box can become this box: same image, the image's default user,
        the default working directory and workspace size, a network only if pool boxes can
        be connected, and a size-limited workspace if one was asked for explicitly."""
        t = self.template
        return (spec.image in self.pools and spec.user is None and spec.workdir == t.workdir
                and spec.workspace_bytes == t.workspace_bytes
                and (t.network or not spec.network)
                and (self._limited or not spec.require_workspace_limit))

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        """Adopt this spoke's running pool boxes of the same template (up to each target),
        remove the others, and start refilling."""
        self._limited = await self.mgr.workspace_limit_unavailable() is None
        try:
            await self._adopt()
        except BoxError as exc:  # Docker not answering yet: the refill's backoff takes over
            log.warning("warm pool: could not look for existing pool boxes: %s", exc)
        self._loop_task = asyncio.create_task(self._refill_loop(), name="warm-pool-refill")

    async def _adopt(self) -> None:
        api = await self.mgr._api()
        rows = await self.mgr._run(
            "listing warm boxes", api.containers, all=True,
            filters={"label": [*du.own_filters(self.mgr.spoke_name)["label"], du.LABEL_POOL]})
        for row in sorted(rows or [], key=lambda r: float(r.get("Created") or 0)):
            labels, name = row.get("Labels") or {}, (row.get("Names") or [""])[0]
            if not du.is_own(labels, self.mgr.spoke_name) or not du.pool_ready(labels, name):
                continue  # a claimed pool box is a box like any other
            pool = self.pools.get(str(row.get("Image", "")))
            pool_id = labels[du.LABEL_BOX]
            if (pool is not None and row.get("State") == "running"
                    and labels.get(du.LABEL_POOL) == self.fingerprint
                    and len(pool.ready) < pool.target):
                pool.ready.append(pool_id)
            else:
                await self._discard(pool_id)

    async def stop(self, *, remove: bool = False) -> None:
        """Stop refilling (boxes being made finish first, at most :data:`STOP_WAIT_S`); keep
        the ready boxes for the next start, or remove them with ``remove``."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._fills:
            _done, pending = await asyncio.wait(set(self._fills), timeout=STOP_WAIT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if remove:
            for pool in self.pools.values():
                while pool.ready:
                    await self._discard(pool.ready.popleft())

    def wake(self) -> None:
        """Something changed (a box went): the refill looks again."""
        self._wake.set()

    # ------------------------------------------------------------------ claim
    async def claim(self, box_id: str, spec: BoxSpec) -> BoxInfo | None:
        """Make a ready pool box box ``box_id`` with ``spec`` applied, or None (no compatible
        pool box: the caller creates the box cold). The caller holds the box's locks."""
        if not self.compatible(spec):
            return None
        pool = self.pools[spec.image]
        api = await self.mgr._api()
        name = self.mgr.container_name(box_id)
        while pool.ready:
            pool_id = pool.ready.popleft()
            self._wake.set()
            try:
                await self.mgr._call(api.rename, self.mgr.container_name(pool_id), name)
            except docker.errors.NotFound:
                continue  # removed behind our back: try the next one
            except docker.errors.APIError as exc:
                pool.ready.appendleft(pool_id)
                if exc.status_code != 409:
                    log.warning("could not claim warm box %s: %s", pool_id, du.one_line(exc))
                return None  # 409: box_id's name is taken (it exists): the cold path says so
            try:
                return await self._apply(api, box_id, pool_id, spec)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self.mgr.destroy(box_id)
                raise
            except Exception as exc:  # this pool box is broken: remove it, create cold
                log.warning("claimed warm box %s for %s but could not apply the request (%s); "
                            "creating the box cold", pool_id, box_id, du.one_line(exc))
                with contextlib.suppress(Exception):
                    await self.mgr.destroy(box_id)
                return None
        return None

    async def _apply(self, api: Any, box_id: str, pool_id: str, spec: BoxSpec) -> BoxInfo:
        name, t = self.mgr.container_name(box_id), self.template
        if (spec.memory_bytes, spec.cpus, spec.pids) != (t.memory_bytes, t.cpus, t.pids):
            await self.mgr._run(f"applying limits to box {box_id}", _update_limits, api, name,
                                spec)
        if spec.network:
            async with self.mgr.network.lock:  # not removed between ensure and connect
                net = await self.mgr.network.ensure()
                await self.mgr._run(f"connecting box {box_id} to {net}",
                                    api.connect_container_to_network, name, net)
        await self.mgr.claims.record(box_id, pool_id, spec.env)
        data = await self.mgr._inspect_own(box_id)
        if not data.get("State", {}).get("Running"):
            raise BoxError(f"warm box {pool_id} is not running", "unavailable")
        return await self.mgr.claims.dated(du.info_from_inspect(data))

    @contextlib.asynccontextmanager
    async def room(self) -> AsyncIterator[None]:
        """Around a cold create: if boxes, pool boxes and creates in progress would exceed
        ``--max-boxes``, a ready pool box goes (the pool yields to real work), and the refill
        counts this create until it is done (it is not in ``list()`` yet)."""
        self._reserved += 1
        try:
            await self._make_room()
            yield
        finally:
            self._reserved -= 1
            self._wake.set()

    async def _make_room(self) -> None:
        if not any(p.ready for p in self.pools.values()):
            return
        live = len(await self.mgr.list())
        while live + self.total() + self._reserved > self.max_boxes:
            fullest = max(self.pools.values(), key=lambda p: len(p.ready))
            if not fullest.ready:
                return
            await self._discard(fullest.ready.pop())

    async def _discard(self, pool_id: str) -> None:
        try:
            await self.mgr.destroy(pool_id)
        except Exception as exc:  # the reap or the next start retries
            log.warning("could not remove warm box %s: %s", pool_id, du.one_line(exc))

    # ------------------------------------------------------------------ refill
    async def _room(self) -> bool:
        return len(await self.mgr.list()) + self.total() + self._reserved < self.max_boxes

    async def _refill_loop(self) -> None:
        while True:
            self._wake.clear()
            now, wait_s = time.monotonic(), None
            for image, pool in self.pools.items():
                if pool.retry_at > now:
                    left = pool.retry_at - now
                    wait_s = left if wait_s is None else min(wait_s, left)
                    continue
                while len(pool.ready) + pool.making < pool.target:
                    try:
                        if not await self._room():  # a destroy wakes us; look again anyway
                            wait_s = ROOM_POLL_S if wait_s is None else min(wait_s, ROOM_POLL_S)
                            break
                    except Exception as exc:  # Docker away: look again later, never crash
                        log.warning("warm pool: cannot count boxes: %s", du.one_line(exc))
                        wait_s = BACKOFF_MAX_S
                        break
                    pool.making += 1
                    task = asyncio.create_task(self._fill_one(image, pool))
                    self._fills.add(task)
                    task.add_done_callback(self._fills.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _fill_one(self, image: str, pool: _Pool) -> None:
        try:
            async with self._sem:
                pool_id = await self._make(image)
            pool.ready.append(pool_id)
            pool.failures, pool.last_error = 0, None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # logged, retried with backoff: never crashes the spoke
            pool.failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (pool.failures - 1))
            pool.retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
            pool.last_error = du.one_line(exc)
            log.warning("warm pool %s: could not make a box (%s); retrying in %.0fs", image,
                        pool.last_error, delay)
        finally:
            pool.making -= 1
            self._wake.set()

    async def _make(self, image: str) -> str:
        """One pool box, through the manager's cold create (same hardening, same main
        process), then off the network until a claim asks for it."""
        pool_id = "bx_" + secrets.token_hex(8)
        spec = replace(self.template, image=image)
        mgr = self.mgr
        try:
            async with mgr.workspaces.box_lock(pool_id):
                try:
                    info = await mgr._create(pool_id, spec,
                                             extra_labels={du.LABEL_POOL: self.fingerprint})
                except BaseException:
                    await mgr.workspaces.forget(pool_id)
                    raise
            if spec.network:
                api = await mgr._api()
                await mgr._run(f"disconnecting warm box {pool_id}",
                               api.disconnect_container_from_network, info.container_id,
                               mgr.network.name)
        except BaseException:
            with contextlib.suppress(Exception):
                await mgr.destroy(pool_id)
            raise
        return pool_id


def _update_limits(api: Any, container: str, spec: BoxSpec) -> None:
    """``docker update`` of memory (and swap: none), CPUs and pids. docker-py's
    ``update_container`` knows neither ``NanoCpus`` nor ``PidsLimit``, so the Engine API's
    endpoint is called directly (blocking: run it in the manager's pool)."""
    body = {"Memory": spec.memory_bytes, "MemorySwap": spec.memory_bytes,
            "NanoCpus": int(spec.cpus * 1e9), "PidsLimit": spec.pids}
    res = api._post_json(api._url("/containers/{0}/update", container), data=body)
    api._raise_for_status(res)
