"""Workers and runs (hub/fleet.py), the events timeline and audit (hub/events_api.py), the
metrics history (hub/history.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hub.openapi.models.common import Answer


class Worker(Answer):
    kind: Literal["workstream", "exec", "job"]
    id: str
    run_id: str | None
    state: str
    spoke: str | None
    spoke_state: str
    box: str | None
    started_at: float | None
    last_heartbeat: float | None


class Workers(Answer):
    workers: list[Worker]
    count: int
    checked_at: float


class Run(Answer):
    id: str
    kind: Literal["workstream", "exec", "job"]
    spoke: str | None
    box: str | None
    state: Literal["running", "ended"]
    started_at: float | None
    ended_at: float | None
    outcome: str | None
    detail: str | None


class Inspection(Answer):
    alive: bool
    run: str
    box: str | None
    spoke: str | None
    checked_at: float
    reason: str = Field(default="", description="why it is not alive")


class AuditRow(Answer):
    id: int
    ts: float
    kind: str
    subject: str
    detail: str
    actor: str = Field(description="`user:NAME`, `key:KEY_ID`, or empty for what the hub "
                                   "observed")
    spoke: str
    result: str


class Events(Answer):
    events: list[AuditRow]
    last: int = Field(description="the cursor to pass as `after` next time")


class Audit(Answer):
    audit: list[AuditRow]
    next_before: int | None = Field(description="pass as `before` for the next page; null "
                                                "at the end")


class History(Answer):
    range: Literal["1h", "24h", "7d"]
    from_: int = Field(alias="from")
    to: int
    step_s: int
    series: dict[str, list[list[float]]] = Field(
        description="name → `[bucket_start, value]` points")




class ClusterHub(Answer):
    id: str
    url: str
    version: str
    started_at: float
    seen_at: float
    live: bool = Field(description="it renewed its row within the cluster's TTL (6 s)")
    leader: bool
    spokes: int = Field(description="spoke links it holds")


class ClusterStatus(Answer):
    hub: str = Field(description="the id of the hub that answered")
    leader: str | None = Field(description="the hub holding the leader lease (janitor, alerts, "
                               "history, queue dispatch), or null while nobody does")
    hubs: list[ClusterHub]
    holders: dict[str, str] = Field(description="spoke name -> the id of the hub holding its link")
