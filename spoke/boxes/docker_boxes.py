"""The real box manager: hardened Docker containers, one per box.

Every Docker SDK call runs in a thread pool owned by the manager, never on the event loop.
Exec output readers get a second pool and file transfers a third, so long-running commands
or big files cannot starve API calls.

The manager only ever touches containers, volumes and networks labelled with its own spoke
name: several spokes may share one Docker engine, and a spoke must never reap its
neighbour's boxes. What each box gets, and why, lives beside the code doing it:
:mod:`~spoke.boxes.docker_users` (never root unless asked for and allowed),
:mod:`~spoke.boxes.docker_workspace` (a size-limited ``/workspace``),
:mod:`~spoke.boxes.docker_network` (networked boxes cannot reach each other),
:mod:`~spoke.boxes.docker_files` (streamed copies through the archive API) and
:mod:`~spoke.boxes.docker_tmpfs` (copies to ``/tmp`` and ``/run``, which the archive API
cannot see). Writes outside those fail: the root filesystem is read-only.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import docker
import docker.errors
from opentelemetry import trace

from protocol.tracecontext import child_span
from spoke.boxes import agent_boxes, docker_files, docker_tmpfs
from spoke.boxes import docker_util as du
from spoke.boxes.base import (
    BoxError,
    BoxInfo,
    BoxInvalid,
    BoxNotFound,
    BoxSpec,
    ExecHandle,
    check_box_path,
    plan_put,
    resolve_box_path,
    tmpfs_mount,
    validate_box_id,
    validate_spec,
)
from spoke.boxes.docker_box_controls import DockerBoxControls
from spoke.boxes.docker_engine import paused_error, usable
from spoke.boxes.docker_exec import (
    DockerExecHandle,
    end_orphaned_execs,
    make_pidfile_path,
    start_exec,
    wrap_command,
)
from spoke.boxes.streaming import QueueExecHandle
from spoke.boxes.warm_pool import WarmPool

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer("spokehub.spoke.docker")


class DockerBoxManager(DockerBoxControls):
    """:class:`~spoke.boxes.base.BoxManager` backed by the local Docker engine (the engine
    plumbing — pools, client, ownership checks — is :class:`DockerEngine`'s; terminals,
    ports, pause, logs and stats are :class:`DockerBoxControls`')."""

    # The spoke's warm pools (spoke/service.py sets them for ``--warm``): create claims
    # from them. Pinned by tests/boxes/test_warm_pool.py.
    warm: WarmPool | None = None

    # ------------------------------------------------------------------ lifecycle
    async def create(self, box_id: str, spec: BoxSpec) -> BoxInfo:
        validate_box_id(box_id)
        validate_spec(spec)
        lock = self._create_locks.setdefault(box_id, asyncio.Lock())
        try:
            # Same-process races; other processes of this spoke wait for the box's file
            # lock (its workspace is made and attached once), and Docker's 409 remains.
            async with lock, self.workspaces.box_lock(box_id):
                if self.warm is not None:
                    claimed = await self.warm.claim(box_id, spec)
                    if claimed is not None:
                        return claimed
                    if not await self._exists(box_id):
                        async with self.warm.room():  # pool boxes count in --max-boxes
                            return await self._create(box_id, spec)
                return await self._create(box_id, spec)
        except BaseException:
            await self.workspaces.forget(box_id)
            raise
        finally:
            if not lock.locked():
                self._create_locks.pop(box_id, None)

    async def workspace_limit_unavailable(self) -> str | None:
        """Why workspaces cannot be size-limited here (None: they can); the spoke warns at
        start. See :mod:`spoke.boxes.docker_workspace`."""
        return await self.workspaces.status()

    async def _create(self, box_id: str, spec: BoxSpec, *,
                      extra_labels: dict[str, str] | None = None) -> BoxInfo:
        api = await self._api()
        name = self.container_name(box_id)
        # Both round trips at once (issue 14: the create's critical path, docs/performance.md).
        existing, image = await asyncio.gather(self._inspect_own(box_id),
                                               self._call(api.inspect_image, spec.image),
                                               return_exceptions=True)
        if not isinstance(existing, BaseException):
            return await self._ensure_started(box_id, existing)
        if not isinstance(existing, BoxNotFound):
            raise existing
        if isinstance(image, docker.errors.ImageNotFound):
            raise BoxInvalid(f"image {spec.image} is not present on this spoke") from None
        if isinstance(image, BaseException):
            raise du.map_docker_error(image, f"checking image {spec.image}") from image
        user, uid, gid = await self._users.choose(api, spec, image)
        labels = {
            du.LABEL_MANAGED: "1",
            du.LABEL_SPOKE: self.spoke_name,
            du.LABEL_BOX: box_id,
            du.LABEL_CREATED: f"{time.time():.3f}",
            **(extra_labels or {}),  # a warm-pool box's (spoke/boxes/warm_pool.py)
        }
        volume, volume_info = await self.volumes.make(box_id, spec, uid, gid)
        host_config = api.create_host_config(
            network_mode=self.network.name if spec.network else "none",
            read_only=True,
            tmpfs=dict(du.TMPFS),
            binds={volume: {"bind": du.WORKSPACE, "mode": "rw"}},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=spec.pids,
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,
            nano_cpus=int(spec.cpus * 1e9),
            init=True,
            runtime=self.runtime,
            **agent_boxes.host_config_args(self.agents is not None),
        )
        create = functools.partial(
            self._call, api.create_container, spec.image, name=name,
            **agent_boxes.create_args(self.agents is not None), labels=labels,
            host_config=host_config, user=user, working_dir=spec.workdir,
            environment=dict(spec.env), detach=True)
        try:
            # Mounted at create (copy-up) and start.
            async with self.volumes.attached(box_id, volume_info) as device:
                try:
                    if spec.network:
                        async with self.network.lock:  # not removed between ensure and create
                            await self.network.ensure()
                            created = await create()
                    else:
                        created = await create()
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise du.map_docker_error(exc, f"creating box {box_id}") from exc
                    # 409: another process won the race. Docker reserves the name before
                    # the container is inspectable, so give the winner a moment to finish.
                    for _ in range(50):
                        with contextlib.suppress(BoxNotFound):
                            return await self._ensure_started(
                                box_id, await self._inspect_own(box_id), attach=False)
                        await asyncio.sleep(0.1)
                    raise BoxError(f"cannot create box {box_id}: a container named {name} "
                                   "exists but is not managed by this spoke", "busy") from exc
                if device is not None:  # after Docker's copy-up, before anything mounts it
                    await self.workspaces.own_root(device, uid, gid)
                self._owners[box_id] = (uid, gid)
                # Just created, so not running: start it by id, no inspect first.
                await self._run(f"starting box {box_id}", api.start, created["Id"])
                return du.info_from_inspect(await self._inspect_own(box_id))
        except BaseException:
            # No container: leave nothing behind. A container that failed to start stays,
            # for the hub's destroy (it records the create failed).
            if not await self._exists(box_id):
                await self._undo_create(box_id, spec)
            raise

    async def _exists(self, box_id: str) -> bool:
        try:
            await self._inspect_own(box_id)
            return True
        except BoxError:
            return False

    async def _undo_create(self, box_id: str, spec: BoxSpec) -> None:
        with contextlib.suppress(Exception):
            await self.volumes.remove(box_id)
        if spec.network:
            with contextlib.suppress(Exception):
                await self.network.release_if_unused()

    async def _ensure_started(self, box_id: str, data: dict[str, Any], *,
                              attach: bool = True) -> BoxInfo:
        """Start a stopped box (its workspace attached first, unless the caller did);
        the caller holds the box's lock."""
        if not data.get("State", {}).get("Running"):
            api = await self._api()
            key = du.workspace_key(data.get("Config", {}).get("Labels")) or box_id
            async with self.volumes.attached(key) if attach else contextlib.nullcontext():
                await self._run(f"starting box {box_id}", api.start, data["Id"])
            data = await self._inspect_own(box_id)
        return du.info_from_inspect(data)

    async def list(self) -> list[BoxInfo]:
        api = await self._api()
        rows = await self._run("listing boxes", api.containers, all=True,
                               filters=du.own_filters(self.spoke_name))
        infos = []
        for row in rows:
            labels = row.get("Labels")
            if not du.is_own(labels, self.spoke_name) or \
                    du.pool_ready(labels, (row.get("Names") or [""])[0]):
                continue  # not ours, or a warm-pool box nobody claimed (not a box yet)
            info = du.info_from_summary(row)
            infos.append(await self.claims.dated(info) if du.LABEL_POOL in (labels or {})
                         else info)
        return sorted((i for i in infos if i.id), key=lambda i: i.created_at)

    async def get(self, box_id: str) -> BoxInfo:
        return await self.claims.dated(du.info_from_inspect(await self._inspect_own(box_id)))

    async def destroy(self, box_id: str) -> bool:
        validate_box_id(box_id)
        api = await self._api()
        existed = True
        try:
            data = await self._inspect_own(box_id)
        except BoxNotFound:
            existed = False
        self._exec_targets.pop(box_id, None)
        for handle in list(self._execs.pop(box_id, ())):
            handle.discard()  # removing the container kills it; just unblock its reader
        if existed and self.agents is not None:
            await self.agents.forget(str(data["Id"]))
        # A claimed warm-pool box's workspace keeps its pool name (spoke/boxes/warm_pool.py).
        key = (du.workspace_key(data.get("Config", {}).get("Labels")) if existed else "") \
            or box_id
        if existed:
            try:
                await self._call(api.remove_container, data["Id"], force=True, v=False)
            except docker.errors.NotFound:
                existed = False  # a concurrent destroy got there first
            except Exception as exc:
                raise du.map_docker_error(exc, f"destroying box {box_id}") from exc
        await self.volumes.remove(key)
        if key != box_id:
            await self.workspaces.forget(box_id)  # the claim's lock file
        await self.claims.forget(box_id)
        self._owners.pop(box_id, None)
        if existed and (data.get("HostConfig") or {}).get("NetworkMode") == self.network.name:
            await self.network.release_if_unused()  # the spoke's last networked box went
        if existed and self.warm is not None:
            self.warm.wake()  # room under --max-boxes, maybe
        return existed

    async def end_orphaned_execs(self) -> int:
        """Kill the commands that execs of an earlier process of this spoke left running in
        its boxes (docker_exec.ORPHANS_SCRIPT); returns how many boxes were swept. Call once
        at start, before taking calls. Pinned by
        tests/test_kill_and_restart.py::test_a_spoke_killed_mid_exec_is_lost_the_caller_told_and_nothing_is_left."""
        api = await self._api()
        swept = 0
        for info in await self.list():
            if info.state != "running":
                continue
            try:
                await self._call(end_orphaned_execs, api, info.container_id)
                swept += 1
            except Exception as exc:  # a box going away meanwhile must not stop the spoke
                log.warning("could not end orphaned execs in box %s: %s", info.id, exc)
        return swept

    async def reap(self, keep: set[str]) -> builtins.list[str]:
        removed: builtins.list[str] = []
        for info in await self.list():
            if info.id not in keep and await self.destroy(info.id):
                removed.append(info.id)
        # Whatever still exists keeps its workspace: kept boxes, warm-pool boxes (claimed
        # ones' workspaces are named after their pool id) and boxes that would not go.
        api = await self._api()
        rows = await self._run("listing boxes", api.containers, all=True,
                               filters=du.own_filters(self.spoke_name))
        await self.volumes.reap(keep | {du.workspace_key(r.get("Labels")) for r in rows})
        await self.claims.reap({du.box_id_of(r.get("Labels"), (r.get("Names") or [""])[0])
                                for r in rows})
        await self._users.reap_probes(api)
        await self.network.release_if_unused()
        return removed

    async def close(self) -> None:
        if self._closed:
            return
        if self.warm is not None:  # its ready boxes stay, for the next start to adopt
            await self.warm.stop()
        for handles in list(self._execs.values()):
            for handle in list(handles):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.abandon(), timeout=10)
        if self.agents is not None:
            await self.agents.close()
        self._closed = True
        for pool in (self._pool, self._stream_pool, self._transfer_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        await self.workspaces.stock.drop()  # spoke/boxes/workspace_stock.py
        with contextlib.suppress(OSError):  # only if empty: no box has a workspace image
            self.workspaces.directory.rmdir()
        if self._owns_client and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    # ------------------------------------------------------------------ exec
    async def exec(
        self,
        box_id: str,
        cmd: builtins.list[str],
        *,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> ExecHandle:
        if not cmd or not all(isinstance(a, str) and "\x00" not in a for a in cmd):
            raise BoxInvalid("exec needs a non-empty list of strings without NUL bytes")
        if timeout is not None and timeout <= 0:
            raise BoxInvalid(f"exec timeout must be positive, got {timeout}")
        if workdir is not None and not workdir.startswith("/"):
            raise BoxInvalid(f"exec workdir must be absolute, got {workdir!r:.100}")
        validate_box_id(box_id)
        if box_id in self._paused:
            raise paused_error(box_id)
        env = await self.claims.env_for(box_id, env)  # a warm-claimed box's create env
        cached_id = self._exec_targets.get(box_id)
        container_id = cached_id or await self._running_id(box_id)
        if sum(len(s) for s in self._execs.values()) >= self._max_execs:
            raise BoxError(f"too many concurrent execs on spoke {self.spoke_name} "
                           f"(limit {self._max_execs})", "busy")
        if self.agents is not None:  # the in-box agent when the box has one
            # Traced like the Docker path's last hop: the frame to the in-box supervisor.
            with child_span(_TRACER, "agent exec", trace.SpanKind.CLIENT,
                            {"spokehub.box_id": box_id, "container.id": container_id}):
                via_agent = await self.agents.exec(
                    container_id, f"box {box_id}", cmd, env=env, workdir=workdir,
                    timeout=timeout, on_done=functools.partial(self._exec_done, box_id))
            if via_agent is not None:
                self._exec_targets[box_id] = container_id
                self._execs.setdefault(box_id, set()).add(via_agent)
                return via_agent
        api = await self._api()
        pidfile = make_pidfile_path()

        def start(container_id: str) -> tuple[str, Any]:
            return start_exec(api, container_id, wrap_command(pidfile, cmd), env=env,
                              workdir=workdir)

        what = f"exec in box {box_id}"
        # A traced call (spoke/dispatcher.py's handler span is current): the Engine API's
        # exec create + start, the last hop of a trace that began at the hub's API.
        with child_span(_TRACER, "docker exec", trace.SpanKind.CLIENT,
                        {"spokehub.box_id": box_id, "container.id": container_id}):
            try:
                exec_id, sock = await self._call(start, container_id)
            except BoxError:
                raise
            except Exception as exc:
                stale = cached_id is not None and (
                    isinstance(exc, docker.errors.NotFound)
                    or (isinstance(exc, docker.errors.APIError) and exc.status_code == 409)
                )
                if not stale:
                    raise du.map_docker_error(exc, what) from exc
                # The cached container was removed or stopped since: the full check answers
                # with the usual error, or finds the box's current container.
                self._exec_targets.pop(box_id, None)
                container_id = await self._running_id(box_id)
                exec_id, sock = await self._run(what, start, container_id)
        self._exec_targets[box_id] = container_id
        handle = DockerExecHandle(
            api=api, container_id=container_id, exec_id=exec_id, sock=sock, pidfile=pidfile,
            stream_pool=self._stream_pool, api_call=self._call,
            on_done=functools.partial(self._exec_done, box_id), timeout=timeout,
        )
        self._execs.setdefault(box_id, set()).add(handle)
        handle.start()
        return handle

    def _exec_done(self, box_id: str, handle: QueueExecHandle) -> None:
        handles = self._execs.get(box_id)
        if handles is not None:
            handles.discard(handle)
            if not handles:
                self._execs.pop(box_id, None)

    # ------------------------------------------------------------------ files
    async def resolve_path(self, box_id: str, path: str) -> str:
        return resolve_box_path(path, du.workdir(await self._inspect_own(box_id)))[0]

    @staticmethod
    def _tmpfs(info: dict[str, Any], path: str) -> bool:
        return tmpfs_mount(path, list((info.get("HostConfig") or {}).get("Tmpfs") or {})) \
            is not None

    async def put_file(self, box_id: str, path: str, chunks: AsyncIterator[bytes], size: int,
                       mode: int = 0o644, *, parents: bool = False,
                       into_dir_name: str | None = None) -> str:
        """Streamed: through the archive API, or for /tmp and /run through a command in the
        box (the archive API cannot see tmpfs mounts). Pinned by tests/boxes/."""
        check_box_path(path)  # refuse a bad path before any Docker call
        if size < 0:
            raise BoxInvalid(f"size must be >= 0, got {size}")
        info = usable(box_id, await self._inspect_own(box_id))
        cid, where, api = str(info["Id"]), f"box {box_id}", await self._api()
        workdir = du.workdir(info)
        full = resolve_box_path(path, workdir)[0]
        if self._tmpfs(info, full):
            known = await docker_tmpfs.kinds(self.exec, box_id, where,
                                             docker_tmpfs.plan_paths(full, into_dir_name))

            async def kind(p: str) -> str | None:
                if p not in known:
                    known.update(await docker_tmpfs.kinds(self.exec, box_id, where, [p]))
                return known[p]

            plan = await plan_put(path, workdir, kind, parents=parents,
                                  into_dir_name=into_dir_name, where=where)
            await docker_tmpfs.put(self._transfer_pool, api, cid, box_id, where, plan, chunks,
                                   size, mode)
            return plan.path
        plan = await plan_put(path, workdir,
                              functools.partial(docker_files.kind_of, self._call, api, cid),
                              parents=parents, into_dir_name=into_dir_name, where=where)
        if box_id not in self._owners:
            user = info.get("Config", {}).get("User") or ""
            self._owners[box_id] = await docker_files.resolve_owner(
                self._call, self._transfer_pool, api, cid, user)
        await docker_files.put_stream(self._call, self._transfer_pool, api, cid, where, plan,
                                      chunks, size, mode, self._owners[box_id])
        return plan.path

    async def get_file(self, box_id: str, path: str, max_bytes: int) -> AsyncIterator[bytes]:
        check_box_path(path)
        if max_bytes < 0:
            raise BoxInvalid(f"max_bytes must be >= 0, got {max_bytes}")
        info = usable(box_id, await self._inspect_own(box_id))
        full, where = resolve_box_path(path, du.workdir(info))[0], f"box {box_id}"
        if self._tmpfs(info, full):
            stream = docker_tmpfs.get(self.exec, box_id, where, full, max_bytes)
        else:
            stream = docker_files.read_stream(self._call, self._transfer_pool, await self._api(),
                                              str(info["Id"]), where, full, max_bytes)
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                yield chunk
