"""The plumbing under the Docker box manager: thread pools, the client, names, ownership.

Every Docker SDK call runs in a thread pool owned by the manager (``_call``), never on the
event loop; exec output readers get a second pool and file transfers a third, so long
commands or big files cannot starve API calls. Only containers labelled with this spoke's
name are "ours" (``_inspect_own``): anything else is "not found". The box operations are
:class:`spoke.boxes.docker_boxes.DockerBoxManager`; this base class is what its helpers
(:mod:`~spoke.boxes.docker_workspace`, :mod:`~spoke.boxes.docker_network`,
:mod:`~spoke.boxes.docker_users`) are handed. Pinned by tests/boxes/.
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors

from spoke.boxes import docker_util as du
from spoke.boxes.agent_boxes import BoxAgents
from spoke.boxes.base import BoxError, BoxNotFound, validate_box_id
from spoke.boxes.docker_network import BoxNetwork
from spoke.boxes.docker_users import ImageUsers
from spoke.boxes.docker_workspace import LoopImages, WorkspaceVolumes
from spoke.boxes.streaming import QueueExecHandle

T = TypeVar("T")


class DockerEngine:
    def __init__(
        self,
        spoke_name: str,
        *,
        client: docker.DockerClient | None = None,
        runtime: str | None = None,
        executor_threads: int = 16,
        max_concurrent_execs: int = 64,
        max_concurrent_transfers: int = 16,
        workspace_dir: Path | None = None,
        exec_agent: bool = True,
    ) -> None:
        """``workspace_dir`` holds the workspace images (the spoke passes its data dir's
        ``workspaces``; default: one under the system's temporary directory).
        ``exec_agent=False``: boxes get no in-box supervisor and every command goes through
        ``docker exec`` (spoke/boxes/agent_boxes.py explains the agent)."""
        if not spoke_name:
            raise ValueError("spoke_name must not be empty")
        self.spoke_name = spoke_name
        self.runtime = runtime
        self._prefix = f"spokehub-{du.sanitize_spoke_name(spoke_name)}-"
        self._transfer_pool = ThreadPoolExecutor(max_concurrent_transfers,
                                                 thread_name_prefix="spokehub-transfer")
        self.workspaces = LoopImages(
            workspace_dir or Path(tempfile.gettempdir()) / f"{self._prefix}workspaces",
            engine_local=os.environ.get("DOCKER_HOST", "unix://").startswith("unix://"))
        self.volumes = WorkspaceVolumes(self._run, self._call, self._api, spoke_name,
                                        self.volume_name, self.workspaces)
        self.network = BoxNetwork(self._run, self._api, spoke_name, self._prefix + "net")
        self._users = ImageUsers(self._run, self._call, self._transfer_pool, spoke_name,
                                 self._prefix)
        self._client = client
        self._owns_client = client is None
        self._client_lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(executor_threads, thread_name_prefix="spokehub-docker")
        self._stream_pool = ThreadPoolExecutor(
            max_concurrent_execs, thread_name_prefix="spokehub-exec"
        )
        self._max_execs = max_concurrent_execs
        self._execs: dict[str, set[QueueExecHandle]] = {}
        # In-box exec agents (None: docker exec only). Pinned by tests/boxes/test_exec_agent.py.
        self.agents = BoxAgents(self._call, self._api) if exec_agent else None
        self._owners: dict[str, tuple[int, int]] = {}
        # box id -> id of the container an earlier exec verified as ours. Labels of a
        # container id never change and ids are never reused, so exec can skip the inspect
        # round trip; Docker itself refuses an exec in a stopped (409) or removed (404)
        # container, and then exec falls back to the full check for the usual errors.
        self._exec_targets: dict[str, str] = {}
        self._create_locks: dict[str, asyncio.Lock] = {}
        # Boxes this process paused (or found paused): exec refuses them at once.
        self._paused: set[str] = set()
        self._closed = False

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
        # A claimed warm-pool box is found by its new name (spoke/boxes/warm_pool.py).
        if not du.is_own(labels, self.spoke_name) or \
                du.box_id_of(labels, data.get("Name", "")) != box_id:
            raise BoxNotFound(f"box {box_id} does not exist on spoke {self.spoke_name}")
        return data

    async def _running_id(self, box_id: str) -> str:
        data = await self._inspect_own(box_id)
        if data.get("State", {}).get("Paused"):
            raise paused_error(box_id)
        if not data.get("State", {}).get("Running"):
            state = data.get("State", {}).get("Status", "unknown")
            raise BoxError(f"box {box_id} is not running (state: {state})", "unavailable")
        return str(data["Id"])


def paused_error(box_id: str) -> BoxError:
    """What every use of a paused box answers (exec, files, PTYs, ports): ``busy``, naming the
    way out. Pinned by tests/boxes/test_conformance.py::test_a_paused_box_refuses_work_until_resumed."""
    return BoxError(f"box {box_id} is paused: resume it first (hub box resume {box_id})", "busy")


def usable(box_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a box's inspect) unless the box is paused: then :func:`paused_error`."""
    if data.get("State", {}).get("Paused"):
        raise paused_error(box_id)
    return data
