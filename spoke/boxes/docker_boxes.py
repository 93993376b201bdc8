"""The real box manager: hardened Docker containers, one per box.

Every Docker SDK call runs in a thread pool owned by the manager, never on the event loop.
Exec output readers get a second pool, so long-running commands cannot starve API calls.

The manager only ever touches containers (and volumes) labelled with its own spoke name:
several spokes may share one Docker engine, and a spoke must never reap its neighbour's
boxes. Files are copied with Docker's archive API, which sees the image filesystem and the
``/workspace`` volume but *not* tmpfs mounts (``/tmp``, ``/run``): put/get files under
``/workspace``. Writes outside it fail because the root filesystem is read-only.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors

from spoke.boxes import docker_files
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
    validate_box_id,
    validate_spec,
)
from spoke.boxes.docker_exec import (
    DockerExecHandle,
    make_pidfile_path,
    start_exec,
    wrap_command,
)

T = TypeVar("T")


class DockerBoxManager:
    """:class:`~spoke.boxes.base.BoxManager` backed by the local Docker engine."""

    def __init__(
        self,
        spoke_name: str,
        *,
        client: docker.DockerClient | None = None,
        runtime: str | None = None,
        executor_threads: int = 16,
        max_concurrent_execs: int = 64,
    ) -> None:
        if not spoke_name:
            raise ValueError("spoke_name must not be empty")
        self.spoke_name = spoke_name
        self.runtime = runtime
        self._prefix = f"spokehub-{du.sanitize_spoke_name(spoke_name)}-"
        self._client = client
        self._owns_client = client is None
        self._client_lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(executor_threads, thread_name_prefix="spokehub-docker")
        self._stream_pool = ThreadPoolExecutor(
            max_concurrent_execs, thread_name_prefix="spokehub-exec"
        )
        self._max_execs = max_concurrent_execs
        self._execs: dict[str, set[DockerExecHandle]] = {}
        self._owners: dict[str, tuple[int, int]] = {}
        # box id -> id of the container an earlier exec verified as ours. Labels of a
        # container id never change and ids are never reused, so exec can skip the inspect
        # round trip; Docker itself refuses an exec in a stopped (409) or removed (404)
        # container, and then exec falls back to the full check for the usual errors.
        self._exec_targets: dict[str, str] = {}
        self._create_locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def container_name(self, box_id: str) -> str:
        return self._prefix + box_id

    def volume_name(self, box_id: str) -> str:
        return self._prefix + box_id + "-ws"

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in our pool; raw docker exceptions propagate."""
        if self._closed:
            raise BoxError("the box manager is closed", "unavailable")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def _api(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    try:
                        self._client = await self._call(docker.from_env)
                    except docker.errors.DockerException as exc:
                        raise du.map_docker_error(exc, "connecting to Docker") from exc
        assert self._client is not None
        return self._client.api

    async def _run(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await self._call(fn, *args, **kwargs)
        except BoxError:
            raise
        except Exception as exc:
            raise du.map_docker_error(exc, what) from exc

    async def _inspect_own(self, box_id: str) -> dict[str, Any]:
        """Inspect our container for ``box_id``; anything not labelled ours is "not found"."""
        validate_box_id(box_id)
        api = await self._api()
        try:
            data: dict[str, Any] = await self._call(api.inspect_container,
                                                    self.container_name(box_id))
        except docker.errors.NotFound:
            raise BoxNotFound(f"box {box_id} does not exist on spoke {self.spoke_name}") from None
        except Exception as exc:
            raise du.map_docker_error(exc, f"inspecting box {box_id}") from exc
        labels = data.get("Config", {}).get("Labels")
        if not du.is_own(labels, self.spoke_name) or (labels or {}).get(du.LABEL_BOX) != box_id:
            raise BoxNotFound(f"box {box_id} does not exist on spoke {self.spoke_name}")
        return data

    async def _running_id(self, box_id: str) -> str:
        data = await self._inspect_own(box_id)
        if not data.get("State", {}).get("Running"):
            state = data.get("State", {}).get("Status", "unknown")
            raise BoxError(f"box {box_id} is not running (state: {state})", "unavailable")
        return str(data["Id"])

    # ------------------------------------------------------------------ lifecycle
    async def create(self, box_id: str, spec: BoxSpec) -> BoxInfo:
        validate_box_id(box_id)
        validate_spec(spec)
        lock = self._create_locks.setdefault(box_id, asyncio.Lock())
        try:
            async with lock:  # same-process races; other processes are handled by 409
                return await self._create(box_id, spec)
        finally:
            if not lock.locked():
                self._create_locks.pop(box_id, None)

    async def _create(self, box_id: str, spec: BoxSpec) -> BoxInfo:
        api = await self._api()
        name = self.container_name(box_id)
        with contextlib.suppress(BoxNotFound):
            return await self._ensure_started(box_id, await self._inspect_own(box_id))
        try:
            await self._call(api.inspect_image, spec.image)
        except docker.errors.ImageNotFound:
            raise BoxInvalid(f"image {spec.image} is not present on this spoke") from None
        except Exception as exc:
            raise du.map_docker_error(exc, f"checking image {spec.image}") from exc
        labels = {
            du.LABEL_MANAGED: "1",
            du.LABEL_SPOKE: self.spoke_name,
            du.LABEL_BOX: box_id,
            du.LABEL_CREATED: f"{time.time():.3f}",
        }
        volume = self.volume_name(box_id)
        await self._run(f"creating workspace volume for box {box_id}", api.create_volume,
                        name=volume, labels={k: v for k, v in labels.items()
                                             if k != du.LABEL_CREATED})
        host_config = api.create_host_config(
            network_mode="bridge" if spec.network else "none",
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
        )
        try:
            await self._call(
                api.create_container, spec.image, command=du.KEEPALIVE_CMD, name=name,
                labels=labels, host_config=host_config, user=spec.user,
                working_dir=spec.workdir, environment=dict(spec.env), detach=True,
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                with contextlib.suppress(Exception):
                    await self._call(api.remove_volume, volume)
                raise du.map_docker_error(exc, f"creating box {box_id}") from exc
            # 409: another process won the race. Docker reserves the name before the
            # container is inspectable, so give the winner a moment to finish.
            for _ in range(50):
                with contextlib.suppress(BoxNotFound):
                    return await self._ensure_started(box_id, await self._inspect_own(box_id))
                await asyncio.sleep(0.1)
            raise BoxError(f"cannot create box {box_id}: a container named {name} exists "
                           "but is not managed by this spoke", "busy") from exc
        return await self._ensure_started(box_id, await self._inspect_own(box_id))

    async def _ensure_started(self, box_id: str, data: dict[str, Any]) -> BoxInfo:
        if not data.get("State", {}).get("Running"):
            api = await self._api()
            await self._run(f"starting box {box_id}", api.start, data["Id"])
            data = await self._inspect_own(box_id)
        return du.info_from_inspect(data)

    async def list(self) -> list[BoxInfo]:
        api = await self._api()
        rows = await self._run("listing boxes", api.containers, all=True,
                               filters=du.own_filters(self.spoke_name))
        infos = [du.info_from_summary(r) for r in rows if du.is_own(r.get("Labels"),
                                                                    self.spoke_name)]
        return sorted((i for i in infos if i.id), key=lambda i: i.created_at)

    async def get(self, box_id: str) -> BoxInfo:
        return du.info_from_inspect(await self._inspect_own(box_id))

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
        if existed:
            try:
                await self._call(api.remove_container, data["Id"], force=True, v=False)
            except docker.errors.NotFound:
                existed = False  # a concurrent destroy got there first
            except Exception as exc:
                raise du.map_docker_error(exc, f"destroying box {box_id}") from exc
        await self._remove_volume(box_id)
        self._owners.pop(box_id, None)
        return existed

    async def _remove_volume(self, box_id: str) -> None:
        api = await self._api()
        volume = self.volume_name(box_id)
        try:
            info = await self._call(api.inspect_volume, volume)
        except docker.errors.NotFound:
            return
        except Exception as exc:
            raise du.map_docker_error(exc, f"inspecting volume of box {box_id}") from exc
        if not du.is_own(info.get("Labels"), self.spoke_name):
            return
        with contextlib.suppress(docker.errors.NotFound):
            await self._run(f"removing volume of box {box_id}", api.remove_volume, volume,
                            force=True)

    async def reap(self, keep: set[str]) -> builtins.list[str]:
        removed: builtins.list[str] = []
        for info in await self.list():
            if info.id not in keep and await self.destroy(info.id):
                removed.append(info.id)
        # Workspace volumes whose container vanished (crash between the two removals).
        api = await self._api()
        vols = await self._run("listing volumes", api.volumes,
                               filters=du.own_filters(self.spoke_name))
        for vol in (vols or {}).get("Volumes") or []:
            box_id = (vol.get("Labels") or {}).get(du.LABEL_BOX, "")
            if box_id and box_id not in keep and du.is_own(vol.get("Labels"), self.spoke_name):
                with contextlib.suppress(BoxError):
                    await self._remove_volume(box_id)
        return removed

    async def close(self) -> None:
        if self._closed:
            return
        for handles in list(self._execs.values()):
            for handle in list(handles):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.abandon(), timeout=10)
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._stream_pool.shutdown(wait=False, cancel_futures=True)
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
        cached_id = self._exec_targets.get(box_id)
        container_id = cached_id or await self._running_id(box_id)
        if sum(len(s) for s in self._execs.values()) >= self._max_execs:
            raise BoxError(f"too many concurrent execs on spoke {self.spoke_name} "
                           f"(limit {self._max_execs})", "busy")
        api = await self._api()
        pidfile = make_pidfile_path()

        def start(container_id: str) -> tuple[str, Any]:
            return start_exec(api, container_id, wrap_command(pidfile, cmd), env=env,
                              workdir=workdir)

        what = f"exec in box {box_id}"
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

    def _exec_done(self, box_id: str, handle: DockerExecHandle) -> None:
        handles = self._execs.get(box_id)
        if handles is not None:
            handles.discard(handle)
            if not handles:
                self._execs.pop(box_id, None)

    async def logs(self, box_id: str, tail: int = 200) -> bytes:
        if tail < 0:
            raise BoxInvalid(f"tail must be >= 0, got {tail}")
        container_id = (await self._inspect_own(box_id))["Id"]
        api = await self._api()
        out = await self._run(f"reading logs of box {box_id}", api.logs, container_id,
                              stdout=True, stderr=True, tail=tail)
        return bytes(out)

    async def stats(self, box_id: str) -> dict[str, float | int]:
        container_id = await self._running_id(box_id)
        api = await self._api()
        raw = await self._run(f"reading stats of box {box_id}", api.stats, container_id,
                              stream=False)
        return du.stats_from_docker(raw)

    # ------------------------------------------------------------------ files
    async def resolve_path(self, box_id: str, path: str) -> str:
        return resolve_box_path(path, du.workdir(await self._inspect_own(box_id)))[0]

    async def put_file(self, box_id: str, path: str, data: bytes, mode: int = 0o644, *,
                       parents: bool = False, into_dir_name: str | None = None) -> str:
        """Write under /workspace: the root is read-only, tmpfs is invisible to archives."""
        check_box_path(path)  # refuse a bad path before any Docker call
        info = await self._inspect_own(box_id)
        cid, where, api = str(info["Id"]), f"box {box_id}", await self._api()
        plan = await plan_put(path, du.workdir(info),
                              functools.partial(docker_files.kind_of, self._call, api, cid),
                              parents=parents, into_dir_name=into_dir_name, where=where)
        if box_id not in self._owners:
            user = info.get("Config", {}).get("User") or ""
            self._owners[box_id] = await docker_files.resolve_owner(self._call, api, cid, user)
        await docker_files.put_file(self._call, api, cid, where, plan, data, mode,
                                    self._owners[box_id])
        return plan.path

    async def get_file(self, box_id: str, path: str, max_bytes: int) -> bytes:
        check_box_path(path)
        if max_bytes < 0:
            raise BoxInvalid(f"max_bytes must be >= 0, got {max_bytes}")
        info = await self._inspect_own(box_id)
        return await docker_files.read_file(
            self._call, await self._api(), str(info["Id"]), f"box {box_id}",
            resolve_box_path(path, du.workdir(info))[0], max_bytes)
