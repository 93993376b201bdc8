"""What a running Docker box offers besides exec and files: terminals and TCP ports through
its in-box exec agent (spoke/boxes/agent_boxes.py; Docker's TTY exec for a terminal where
there is none), Docker's freezer (pause/resume), its main process output and its usage.

Split from :mod:`spoke.boxes.docker_boxes` (lifecycle, exec, files), whose manager inherits
these. Pinned by tests/boxes/test_exec_agent.py, tests/boxes/test_conformance.py and
tests/test_box_pause.py.
"""

from __future__ import annotations

import builtins
import functools

from spoke.boxes import agent_boxes
from spoke.boxes import docker_util as du
from spoke.boxes.base import BoxError, BoxInfo, BoxInvalid, Channel
from spoke.boxes.docker_engine import DockerEngine, paused_error
from spoke.boxes.warm_pool import ClaimRecords


class DockerBoxControls(DockerEngine):
    """The manager's terminals, ports, pause, logs and stats (see the module docstring)."""

    @functools.cached_property
    def claims(self) -> ClaimRecords:
        """Environment and creation time of boxes claimed from a warm pool."""
        return ClaimRecords(self.workspaces.directory)

    # ------------------------------------------------------------------ PTYs and ports
    async def open_pty(self, box_id: str, cmd: builtins.list[str], *,
                       env: dict[str, str] | None = None, workdir: str | None = None,
                       rows: int = 24, cols: int = 80) -> Channel:
        """Through the box's exec agent (spoke/boxes/agent_boxes.py), else Docker's TTY
        exec. Pinned by tests/boxes/test_exec_agent.py."""
        if workdir is not None and not workdir.startswith("/"):
            raise BoxInvalid(f"PTY workdir must be absolute, got {workdir!r:.100}")
        if box_id in self._paused:
            raise paused_error(box_id)
        container_id = await self._running_id(box_id)
        env = await self.claims.env_for(box_id, env)
        if self.agents is None:
            return await agent_boxes.docker_tty(self._call, await self._api(), container_id,
                                                cmd, env=env, workdir=workdir, rows=rows,
                                                cols=cols)
        return await self.agents.open_pty(container_id, f"box {box_id}", cmd, env=env,
                                          workdir=workdir, rows=rows, cols=cols)

    async def open_port(self, box_id: str, port: int) -> Channel:
        """A TCP connection made by the box's exec agent; ``unavailable`` without one (an
        image without python3). Pinned by tests/boxes/test_exec_agent.py."""
        if box_id in self._paused:
            raise paused_error(box_id)
        container_id = await self._running_id(box_id)
        if self.agents is None:
            raise BoxError(f"cannot reach port {port} in box {box_id}: exec agents are off on "
                           f"spoke {self.spoke_name}", "unavailable")
        return await self.agents.open_port(container_id, f"box {box_id}", port)

    # ------------------------------------------------------------------ pause
    async def pause(self, box_id: str) -> BoxInfo:
        """Docker's freezer (``docker pause``): every process stops, memory is kept. The box
        is remembered as paused so exec refuses it without an Engine round trip (a paused
        box's supervisor cannot answer either). Pinned by tests/boxes/test_conformance.py::
        test_a_paused_box_refuses_work_until_resumed."""
        data = await self._inspect_own(box_id)
        state = data.get("State", {})
        if not state.get("Paused"):
            if not state.get("Running"):
                raise BoxError(f"cannot pause box {box_id}: it is not running "
                               f"(state: {state.get('Status', 'unknown')})", "unavailable")
            api = await self._api()
            await self._run(f"pausing box {box_id}", api.pause, data["Id"])
        self._paused.add(box_id)
        return du.info_from_inspect(await self._inspect_own(box_id))

    async def resume(self, box_id: str) -> BoxInfo:
        data = await self._inspect_own(box_id)
        if data.get("State", {}).get("Paused"):
            api = await self._api()
            await self._run(f"resuming box {box_id}", api.unpause, data["Id"])
        self._paused.discard(box_id)
        return du.info_from_inspect(await self._inspect_own(box_id))

    async def logs(self, box_id: str, tail: int = 200) -> bytes:
        if tail < 0:
            raise BoxInvalid(f"tail must be >= 0, got {tail}")
        data = await self._inspect_own(box_id)
        container_id = data["Id"]
        if ((data.get("HostConfig") or {}).get("LogConfig") or {}).get("Type") == "none":
            # An agent box: Docker keeps no log (the supervisor's frames share the stream);
            # the spoke kept what reached the box's stdout while it was attached.
            kept = self.agents.main_output(container_id) if self.agents is not None else b""
            return b"\n".join(kept.split(b"\n")[-tail - 1:]) if kept else b""
        api = await self._api()
        out = await self._run(f"reading logs of box {box_id}", api.logs, container_id,
                              stdout=True, stderr=True, tail=tail)
        return bytes(out)

    async def stats(self, box_id: str) -> dict[str, float | int]:
        data = await self._inspect_own(box_id)  # a paused box has stats too (frozen)
        if not data.get("State", {}).get("Running"):
            raise BoxError(f"box {box_id} is not running "
                           f"(state: {data.get('State', {}).get('Status', 'unknown')})",
                           "unavailable")
        container_id = str(data["Id"])
        api = await self._api()
        raw = await self._run(f"reading stats of box {box_id}", api.stats, container_id,
                              stream=False)
        return du.stats_from_docker(raw)
