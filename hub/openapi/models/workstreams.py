"""Workstreams, their events, approvals, models and usage (hub/workstreams/api.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from hub.openapi.models.common import Answer, Body
from hub.workstreams.moves import ON_LOSS
from protocol.verbs import MAX_MESSAGE_CHARS

# Not blank, and what a spoke can be sent.
Message = Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS, pattern=r"\S",
                                description="not blank")]
STATE = Literal["queued", "starting", "idle", "thinking", "running", "attention", "error",
                "closed"]


class WsStart(Body):
    message: Message
    spoke: str | None = Field(default=None, description="run it on this spoke")
    label: str | None = Field(default=None, description="on a spoke with this label (not "
                                                        "with `spoke`)")
    model: str | None = Field(default=None, description="a model alias; default: the hub's")
    image: str | None = None
    auto_approve: bool | None = False
    on_loss: Literal["resume", "interrupt"] | None = Field(
        default="resume", description="what happens when its spoke is lost")


assert set(get_args(get_args(WsStart.model_fields["on_loss"].annotation)[0])) == set(ON_LOSS)


class WsMessage(Body):
    message: Message


class Decision(Body):
    approve: bool
    reason: str | None = ""


class Workstream(Answer):
    id: str
    state: STATE
    spoke: str | None
    model: str
    title: str
    error: str
    created_at: float
    updated_at: float
    last_seq: int
    input_tokens: int
    output_tokens: int


class WorkstreamDetail(Workstream):
    pending_approvals: list[dict[str, Any]]
    last_message_seq: int


class WorkstreamStarted(WorkstreamDetail):
    message_seq: int = Field(description="the seq of the message's `user_message` event")


class Event(Answer):
    seq: int
    ts: float
    kind: str
    data: dict[str, Any]


class Decided(Answer):
    ws_id: str
    call_id: str
    state: str


class Model(Answer):
    alias: str
    provider: Literal["openai", "anthropic"]
    model: str
    base_url: str
    context_window: int
    has_key: bool


class Models(Answer):
    default: str | None
    fallback: list[str]
    models: list[Model]


class Usage(Answer):
    spoke: str | None
    model: str
    input_tokens: int
    output_tokens: int
    calls: int


# As lists (the route class has a method named ``list``, which hides the builtin there).
Workstreams = list[Workstream]
Events = list[Event]
Usages = list[Usage]
