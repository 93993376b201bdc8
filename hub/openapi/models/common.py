"""The error shape every route answers with, and the base classes of the other models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from protocol.errors import ErrorCode


class Answer(BaseModel):
    """A JSON answer: more properties may come than are listed (new columns, new facts)."""

    model_config = ConfigDict(extra="allow")


class Body(BaseModel):
    """A JSON request body (an object). Unknown fields are ignored, and a field sent as
    ``null`` counts as absent (:func:`hub.http_util.want`)."""

    model_config = ConfigDict(extra="ignore")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: ErrorCode
    message: str


class Error(BaseModel):
    """``{"error": {"code", "message"}}``: the code is typed (docs/protocol.md, "Error
    codes"), the message is for people and may change."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail
