"""``hub cluster``: the hubs serving this cluster, the leader, which hub holds which spoke
(``GET /api/cluster``; docs/scaling.md). Pinned by tests/test_multihub.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cli.common import data_dir_option, emit, json_option, table
from cli.common import guarded as _call
from cli.common import hub_client as _client

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")


def _rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    now = time.time()
    return [{"hub": h["id"] + (" (this one)" if h["id"] == data["hub"] else ""),
             "url": h["url"], "leader": "yes" if h["leader"] else "",
             "state": "live" if h["live"] else "dead", "spokes": h["spokes"],
             "seen": f"{max(0.0, now - h['seen_at']):.0f}s ago", "version": h["version"]}
            for h in data["hubs"]]


@click.command("cluster")
@hub_dir
@json_option
def cluster(data_dir: Path, as_json: bool) -> None:
    """The hubs serving this cluster (one database, one public URL), which is the leader
    (janitor, alerts, history, queue dispatch), and how many spoke links each holds. A hub
    on its own is a cluster of one."""
    data = _call(lambda: _client(data_dir).request("GET", "/api/cluster"))
    emit(data, as_json, lambda d: table(_rows(d), ["hub", "url", "leader", "state", "spokes",
                                                   "seen", "version"]))
