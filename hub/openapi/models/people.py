"""Sign-in, sessions and users (hub/web/auth.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from hub.openapi.models.common import Answer, Body

ROLE = Literal["viewer", "operator", "admin"]
USER_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# 12 characters at least, at most 72 bytes (bcrypt's limit), no NUL.
Password = Annotated[str, Field(min_length=12, max_length=72, pattern=r"^[^\x00]*$")]


class SignIn(Body):
    user: str
    password: str


class Session(Answer):
    user: str
    role: ROLE
    csrf: str = Field(description="send it back as `X-CSRF-Token` on every write")
    expires_at: float


class User(Answer):
    name: str
    role: ROLE
    created_at: float
    password_set_at: float | None
    disabled_at: float | None


class UserAdd(Body):
    name: str = Field(pattern=USER_NAME)
    role: ROLE
    password: Password | None = Field(default=None, description="none: one is generated "
                                      "and answered once")


class UserAdded(Answer):
    name: str
    role: ROLE
    created_at: float
    password: str = Field(default="", description="the generated password, only when none "
                                                  "was given")


class UserRemoved(Answer):
    name: str
    removed: Literal[True]


class PasswordSet(Body):
    password: Password
    current_password: str | None = Field(default=None, description="required unless an "
                                         "admin sets it")


class PasswordWasSet(Answer):
    name: str
    password_set: Literal[True]
