"""Who acted, and what came of it: the audit log's writers.

Every row of the audit table (hub/store/audit.py) names its actor: ``user:NAME`` or
``key:KEY_ID`` for what a person or a client asked for, ``""`` for what the hub itself
observed (a spoke connecting, a box reaped). The actor is carried in a context variable,
:data:`ACTING`, set where a caller is authenticated — the REST auth middleware
(hub/http_util.py) and the MCP tool registrar (hub/mcp/cluster_tools.py) — so the services
that do the work (boxes, workstreams, jobs) record it without every signature growing an
``actor`` argument, and work a request starts in a background task (an MCP job) keeps its
caller. The scheduler and the spoke links run in tasks started at boot: their rows have no
actor, as they should.

:func:`audited` wraps one action: the row is written when the action ends, with its
``result`` (``ok``, ``exit 3``, ``cancelled``, ``not_found: no box …``), also when it failed
or its caller went away. Which actions are audited: every admin action, and every verb a
caller asks of a spoke that changes or runs something (box create/destroy, exec, file put/get,
workstream start/message/approve/cancel/close); reads (list, stats, logs, ping) are not,
or a dashboard polling stats would flood the log. Pinned by tests/test_roles.py::
test_audit_rows_name_the_actor and tests/test_audit.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass

from hub.store import Store
from hub.store.engine import Tx
from protocol.errors import RemoteError

log = logging.getLogger(__name__)

ACTING: ContextVar[str] = ContextVar("spokehub_acting", default="")


def acting() -> str:
    """Who the current task acts for (``""`` when nobody asked: the hub's own work)."""
    return ACTING.get()


async def record(store: Store, kind: str, subject: str, detail: str = "", *,
                 spoke: str = "", result: str = "ok") -> None:
    """Append one row for the current actor. Never raises: an action that happened is not
    undone because its row could not be written (the failure is logged instead)."""
    try:
        await asyncio.shield(store.audit(kind, subject, detail, actor=acting(), spoke=spoke,
                                         result=result))
    except Exception:
        log.warning("could not write the audit row %s %s", kind, subject, exc_info=True)


@dataclass
class Outcome:
    """What the wrapped action sets before it ends normally: its ``result`` (default
    ``ok``), and the spoke it ran on when that is learnt inside the action."""

    result: str | None = None  # None: "ok" if the block ends normally
    spoke: str = ""
    detail: str | None = None
    # The action's last writes, committed with its row when the block ends normally (one
    # store round trip; a box create's ``running``). If they fail, the action fails and its
    # row says so. Pinned by tests/hub/test_audit_with_writes.py.
    also: Callable[[Tx], None] | None = None
    recorded: bool = False


def describe_error(err: BaseException) -> str:
    if isinstance(err, RemoteError):
        return f"{err.code.value}: {err.message}"[:300]
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    if isinstance(err, ConnectionError | GeneratorExit):
        return "cancelled: the caller went away"
    return f"internal: {type(err).__name__}"


@contextlib.asynccontextmanager
async def audited(store: Store, kind: str, subject: str, detail: str = "", *,
                  spoke: str = "") -> AsyncIterator[Outcome]:
    """``async with audited(store, "box.exec", box_id, cmd) as outcome:`` — one row when
    the block ends: ``outcome.result`` if it ended normally, the error's code and message
    (or ``cancelled``) if not. The row is written even while the task is being cancelled."""
    outcome = Outcome(spoke=spoke)
    try:
        yield outcome
        if outcome.also is not None:
            write = asyncio.ensure_future(store.audit(
                kind, subject, detail if outcome.detail is None else outcome.detail,
                actor=acting(), spoke=outcome.spoke, result=outcome.result or "ok",
                also=outcome.also))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # The write goes on and its row is this action's row: not a second one.
                outcome.recorded = True
                write.add_done_callback(_log_lost_write)
                raise
            outcome.recorded = True
    except BaseException as err:
        # A stream closed by its reader after the last item keeps the result it reached.
        if not (isinstance(err, GeneratorExit) and outcome.result is not None):
            outcome.result = describe_error(err)
        raise
    finally:
        if not outcome.recorded:
            await record(store, kind, subject,
                         detail if outcome.detail is None else outcome.detail,
                         spoke=outcome.spoke, result=outcome.result or "ok")


def _log_lost_write(write: asyncio.Future[None]) -> None:
    if not write.cancelled() and write.exception() is not None:
        log.warning("could not write an audit row and its action's writes",
                    exc_info=write.exception())
