"""Several real hub processes serving one cluster (issue 11), for end-to-end tests and the
forwarding benchmark.

The rig is what docs/scaling.md tells an operator to run: N ``hub serve`` processes on one
PostgreSQL database (tests/pg.py), all with the SAME certificate and key (one self-signed pair
made with hub/tls.py for 127.0.0.1, so a spoke's pin holds whichever hub it reaches), each with
its own data dir and a ``--peer-url`` the other hubs reach it at, and a TCP load balancer
(tests/tcp_lb.py) in front whose URL is every hub's ``--public-url``. Join tokens therefore
name the balancer, and spokes join and reconnect through it; the tests and the CLI talk to
each hub directly (its own port), which is how "hub A forwards to hub C" is observed.

Built on tests/cluster.py (Proc, Hub, Spoke); see tests/test_multihub.py for its use.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import docker

from client.http_client import HubClient
from hub.tls import ensure_self_signed
from tests.cluster import HUB, Hub, Spoke, wait_until
from tests.tcp_lb import TcpLoadBalancer
from tests.ws_helpers import ThreadedLLM, write_hub_models


class ClusterHub(Hub):
    """One hub of the cluster. :meth:`client` and :meth:`cli` reach THIS hub (its own port),
    not the public URL written in its ``admin.json`` (the balancer)."""

    def __init__(self, tmp: Path, name: str, *, database_url: str, cert: Path, key: Path,
                 public_url: str, extra: list[str] | None = None) -> None:
        super().__init__(tmp, name)
        self.name = name
        self.hub_id = ""  # the cluster's name for this process; a restart is a new member
        self.extra = ["--host", "127.0.0.1", "--database", database_url, "--peer-url", self.url,
                      "--tls-cert", str(cert), "--tls-key", str(key), "--public-url", public_url,
                      *(extra or [])]

    def start(self) -> None:
        super().start()
        self.hub_id = str(self.cluster()["hub"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def credentials(self) -> dict[str, Any]:
        return dict(json.loads((self.dir / "admin.json").read_text()))

    def client(self) -> HubClient:
        doc = self.credentials()
        return HubClient(self.url, doc["api_key"], doc.get("pin") or None)

    def cli_env(self) -> dict[str, str]:
        return {**super().cli_env(), "SPOKEHUB_URL": self.url}

    def popen_cli(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """``hub ARGS`` against this hub, its stdout read as it comes (a pipe, unbuffered)."""
        return subprocess.Popen([HUB, *args], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.cli_env(), bufsize=0)

    def cluster(self) -> dict[str, Any]:
        """``GET /api/cluster``: this hub's id, the leader, the members and who holds which spoke."""
        return dict(self.client().request("GET", "/api/cluster"))

    def __repr__(self) -> str:
        return f"<{self.name} {self.hub_id or '?'} :{self.port}{'' if self.alive() else ' dead'}>"


class MultiHub:
    """``n`` hubs on ``database_url`` behind one balancer; spokes join through it.

    ``llm``: the hubs' models point at this scripted LLM (tests/ws_helpers.py), for workstreams.
    ``extra``: more ``hub serve`` flags for every hub (the history is sampled every second by
    default, so the leader's work is seen quickly)."""

    def __init__(self, tmp: Path, database_url: str, n: int = 3, *, llm: ThreadedLLM | None = None,
                 extra: list[str] | None = None) -> None:
        if n < 1:
            raise ValueError(f"a cluster has at least one hub, not {n}")
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"several hubs share one PostgreSQL database, not {database_url!r}")
        self.tmp, self.database_url = tmp, database_url
        tls = tmp / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = tls / "hub.crt", tls / "hub.key"
        ensure_self_signed(self.cert, self.key, ["127.0.0.1"])
        self.lb = TcpLoadBalancer()
        flags = ["--history-interval", "1s", *(extra or [])]
        self.hubs = [ClusterHub(tmp, f"hub{i}", database_url=database_url, cert=self.cert, key=self.key,
                                public_url=self.lb.url, extra=flags) for i in range(n)]
        for hub in self.hubs:
            self.lb.add_backend(hub.port)
            if llm is not None:
                write_hub_models(hub.dir, llm)
        self.spokes: list[Spoke] = []

    # ------------------------------------------------------------- lifecycle
    def start(self) -> MultiHub:
        """Start the hubs one after the other, then wait until each sees all the others."""
        for hub in self.hubs:
            hub.start()
        ids = {hub.hub_id for hub in self.hubs}
        assert len(ids) == len(self.hubs), f"hubs share an id: {self.hubs}"
        for hub in self.hubs:
            wait_until(lambda h=hub: ids <= {m["id"] for m in h.cluster()["hubs"]},  # type: ignore[misc]
                       what=f"{hub} to see every hub of the cluster")
        return self

    def stop(self) -> None:
        """Spokes, hubs, balancer; and the spokes' boxes and volumes in Docker."""
        for spoke in self.spokes:
            spoke.stop()
        for hub in self.hubs:
            hub.stop()
        self.lb.close()
        client = docker.from_env()
        for spoke in self.spokes:
            for c in client.containers.list(all=True, filters={"label": f"spokehub.spoke={spoke.name}"}):
                c.remove(force=True)
            for v in client.volumes.list(filters={"label": f"spokehub.spoke={spoke.name}"}):
                v.remove(force=True)

    def __enter__(self) -> MultiHub:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- spokes
    def join(self, name: str | None = None, extra: list[str] | None = None) -> Spoke:
        """A spoke joined with a token made through a live hub (any: they are one cluster),
        connecting through the balancer; returns once the cluster records it connected."""
        via = self.any_live()
        spoke = Spoke(self.tmp, via, name=name, extra=extra)
        self.spokes.append(spoke)
        spoke.join(via.token(spoke.name))
        wait_until(lambda: self.holder_of(spoke.name), what=f"a hub to hold {spoke.name}")
        return spoke

    def spread(self) -> dict[str, list[str]]:
        """``{hub name: [spoke names]}`` as the cluster records it (every live hub listed)."""
        out: dict[str, list[str]] = {h.name: [] for h in self.live()}
        for spoke, hub_id in sorted(self.any_live().cluster()["holders"].items()):
            holder = self.hub_by_id(hub_id)
            if holder is not None:
                out.setdefault(holder.name, []).append(spoke)
        return out

    # ----------------------------------------------------------------- views
    def live(self) -> list[ClusterHub]:
        return [h for h in self.hubs if h.alive()]

    def any_live(self, *, besides: ClusterHub | None = None) -> ClusterHub:
        for hub in self.live():
            if hub is not besides:
                return hub
        raise AssertionError(f"no live hub left (besides {besides}): {self.hubs}")

    def hub_by_id(self, hub_id: str | None) -> ClusterHub | None:
        return next((h for h in self.hubs if hub_id and h.hub_id == hub_id), None)

    def holder_of(self, spoke: str, *, via: ClusterHub | None = None) -> ClusterHub | None:
        """The hub the cluster records holding ``spoke``'s connection (asked of ``via``, else of
        any live hub), or None."""
        view = (via or self.any_live()).cluster()
        return self.hub_by_id(view["holders"].get(spoke))

    def leader(self, *, via: ClusterHub | None = None) -> ClusterHub | None:
        """The hub holding the leader lease, as ``via`` (else any live hub) sees it."""
        return self.hub_by_id((via or self.any_live()).cluster().get("leader"))

    def others(self, *hubs: ClusterHub | None) -> list[ClusterHub]:
        """The live hubs that are none of ``hubs``."""
        return [h for h in self.live() if all(h is not x for x in hubs)]

    # ---------------------------------------------------------------- faults
    def kill9(self, hub: ClusterHub) -> float:
        """SIGKILL ``hub`` (no goodbye to the database or its peers; the balancer is left as it
        is and skips it, since its port now refuses). Returns the wall time of the kill."""
        assert hub.proc is not None and hub.alive(), f"{hub} is not running"
        killed_at = time.time()
        hub.proc.stop(signal.SIGKILL)
        return killed_at

    def restart(self, hub: ClusterHub) -> None:
        """Start ``hub`` again on its data dir and port: a new member of the cluster."""
        assert not hub.alive(), f"{hub} is still running"
        old = hub.hub_id
        hub.start()
        assert hub.hub_id != old, "a restarted hub must be a new member"
