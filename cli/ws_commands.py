"""``hub ws …``: agent workstreams, with replies streamed to the terminal as produced."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.common import aliased_group, data_dir_option, emit, fail, json_option, table
from cli.common import guarded as _guard
from cli.common import hub_client as _client

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")


def approval_hint(ws_id: str, call_id: str) -> str:
    """The commands that answer an approval, exactly as they can be pasted."""
    return f"hub ws approve {ws_id} {call_id}    or    hub ws deny {ws_id} {call_id}"


class _Printer:
    """Human rendering of events: text streams, tool calls and approvals on stderr."""

    def __init__(self, ws_id: str) -> None:
        self.ws_id = ws_id
        self.streamed = False
        self.hinted: set[str] = set()

    def approval(self, call_id: str, tool: str) -> None:
        if call_id in self.hinted:
            return
        self.hinted.add(call_id)
        click.echo(f"? {tool} needs your approval (call {call_id}); answer with:\n"
                   f"    {approval_hint(self.ws_id, call_id)}", err=True)

    def __call__(self, event: dict[str, Any]) -> None:
        kind, data = event["kind"], event.get("data") or {}
        if kind == "text_delta":
            sys.stdout.write(str(data.get("text", "")))
            sys.stdout.flush()
            self.streamed = True
        elif kind == "assistant_message":
            if not self.streamed:
                sys.stdout.write(str(data.get("text", "")))
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.streamed = False
        elif kind == "tool_call":
            click.echo(f"→ {data.get('tool')} {json.dumps(data.get('args'))[:300]}", err=True)
        elif kind == "tool_result":
            mark = "✗" if data.get("is_error") else "←"
            click.echo(f"{mark} {str(data.get('output', ''))[:300]}", err=True)
        elif kind == "approval_requested":
            self.approval(str(data.get("call_id")), str(data.get("tool")))
        elif kind == "error":
            click.echo(f"error: {data.get('message')}", err=True)
        elif kind == "assigned":
            how = "resumed" if data.get("resumed") else "running"
            click.echo(f"[{self.ws_id} {how} on spoke {data.get('spoke')}]", err=True)
        elif kind == "waiting":
            click.echo(f"[{self.ws_id} {data.get('reason')}]", err=True)
        elif kind == "notice":
            click.echo(f"[{self.ws_id}: {data.get('message')}]", err=True)


def _follow(client: Any, ws_id: str, after: int | None, as_json: bool, stop_on_approval: bool) -> None:
    """Print the workstream's events from ``after`` until it answers (or asks, if told to stop
    there); exit 1 if it ended in error."""
    printer = _Printer(ws_id)

    def on_event(event: dict[str, Any]) -> None:
        if not as_json:
            printer(event)

    def run() -> dict[str, Any]:
        result: dict[str, Any] = client.wait_reply(ws_id, after=after, on_event=on_event,
                                                   stop_on_approval=stop_on_approval)
        return result

    result = _guard(run)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for approval in result["pending_approvals"]:
            printer.approval(str(approval["call_id"]), str(approval["tool"]))
        click.echo(f"[{result['id']} {result['state']}]", err=True)
    if result["state"] == "error":
        sys.exit(1)


def _converse(data_dir: Path, as_json: bool, wait: bool, message: str, ws_id: str | None = None,
              **opts: Any) -> None:
    client = _client(data_dir)
    if ws_id:
        row = _guard(lambda: client.send_message(ws_id, message))
    else:
        row = _guard(lambda: client.start_workstream(message, **opts))
    if not wait:
        emit(row, as_json, lambda d: click.echo(d["id"]))
        return
    _follow(client, str(row["id"]), int(row["message_seq"]) - 1, as_json, stop_on_approval=False)


@click.group("ws", cls=aliased_group())
def ws() -> None:
    """Agent workstreams: conversations with a tool-using agent in a box on a spoke."""


@ws.command("new")
@hub_dir
@json_option
@click.option("--spoke", default=None, help="Run on this spoke.")
@click.option("--label", default=None, help="Run on a spoke with this label.")
@click.option("--model", default=None, help="Model alias (default: the hub's default).")
@click.option("--image", default=None, help="Box image (default: the spoke's default).")
@click.option("--auto-approve", is_flag=True, help="Run every tool without asking.")
@click.option("--on-loss", type=click.Choice(["resume", "interrupt"]), default="resume",
              show_default=True, help="If its spoke is lost: continue on another suitable spoke "
              "from the transcript (directed work waits for its spoke), or end the turn as "
              "interrupted.")
@click.option("--no-wait", is_flag=True, help="Print the id and return at once.")
@click.argument("message")
def ws_new(data_dir: Path, as_json: bool, spoke: str | None, label: str | None, model: str | None,
           image: str | None, auto_approve: bool, on_loss: str, no_wait: bool, message: str) -> None:
    """Start an agent workstream on MESSAGE and stream its work; tool calls that need
    approval print the `hub ws approve …` command to answer them with.

    \b
    Example:  hub ws new --spoke local "write a fizzbuzz in python and run it"
    """
    if spoke and label:
        fail("give --spoke or --label, not both", 2)
    _converse(data_dir, as_json, not no_wait, message, spoke=spoke, label=label, model=model,
              image=image, auto_approve=auto_approve, on_loss=on_loss)


@ws.command("send")
@hub_dir
@json_option
@click.option("--no-wait", is_flag=True, help="Print the id and return at once.")
@click.argument("ws_id")
@click.argument("message")
def ws_send(data_dir: Path, as_json: bool, no_wait: bool, ws_id: str, message: str) -> None:
    """Send MESSAGE to workstream WS_ID and stream the reply (only what is new).

    \b
    Example:  hub ws send ws_0123456789abcdef "now add tests"
    """
    _converse(data_dir, as_json, not no_wait, message, ws_id=ws_id)


def _decide(data_dir: Path, as_json: bool, ws_id: str, call_id: str | None, approve: bool,
            reason: str) -> None:
    client = _client(data_dir)
    if call_id is None:
        pending = _guard(lambda: client.request("GET", f"/api/ws/{ws_id}"))["pending_approvals"]
        if not pending:
            fail(f"{ws_id} has no tool call waiting for approval", 2)
        if len(pending) > 1:
            ids = " ".join(str(p["call_id"]) for p in pending)
            fail(f"{ws_id} has {len(pending)} calls waiting ({ids}): name the one to answer", 2)
        call_id = str(pending[0]["call_id"])
    body = {"approve": approve, "reason": reason}
    data = _guard(lambda: client.request("POST", f"/api/ws/{ws_id}/approvals/{call_id}", body))
    emit(data, as_json, lambda d: click.echo(f"{call_id}: {d['state']}"))


@ws.command("approve")
@hub_dir
@json_option
@click.argument("ws_id")
@click.argument("call_id", required=False)
def ws_approve(data_dir: Path, as_json: bool, ws_id: str, call_id: str | None) -> None:
    """Let the agent run the tool call CALL_ID (optional when only one waits).

    \b
    Example:  hub ws approve ws_0123456789abcdef call_1
    """
    _decide(data_dir, as_json, ws_id, call_id, True, "")


@ws.command("deny")
@hub_dir
@json_option
@click.option("--reason", default="", help="Why; the model is told, so it can choose another way.")
@click.argument("ws_id")
@click.argument("call_id", required=False)
def ws_deny(data_dir: Path, as_json: bool, reason: str, ws_id: str, call_id: str | None) -> None:
    """Refuse the tool call CALL_ID (optional when only one waits); the agent is told why.

    \b
    Example:  hub ws deny ws_0123456789abcdef call_1 --reason "not in /etc"
    """
    _decide(data_dir, as_json, ws_id, call_id, False, reason)


@ws.command("wait")
@hub_dir
@json_option
@click.argument("ws_id")
def ws_wait(data_dir: Path, as_json: bool, ws_id: str) -> None:
    """Follow the current turn of WS_ID: print the agent's work until it answers, or until a
    tool call waits for approval (printing the commands that answer it).

    \b
    Example:  hub ws wait ws_0123456789abcdef
    """
    _follow(_client(data_dir), ws_id, None, as_json, stop_on_approval=True)


@ws.command("show")
@hub_dir
@json_option
@click.argument("ws_id")
def ws_show(data_dir: Path, as_json: bool, ws_id: str) -> None:
    """The transcript: every event, from the hub's log."""
    client = _client(data_dir)
    row = _guard(lambda: client.request("GET", f"/api/ws/{ws_id}"))
    events: list[dict[str, Any]] = []
    while True:
        after = events[-1]["seq"] if events else 0
        path = f"/api/ws/{ws_id}/events?after={after}"
        page = _guard(functools.partial(client.request, "GET", path))
        if not page:
            break
        events.extend(page)
    if as_json:
        click.echo(json.dumps({**row, "events": events}, indent=2))
        return
    click.echo(f"{row['id']}  state={row['state']}  spoke={row['spoke'] or '-'}  model={row['model']}", err=True)
    if row.get("waiting"):
        click.echo(row["waiting"], err=True)
    printer = _Printer(ws_id)
    for event in events:
        if event["kind"] == "user_message":
            click.echo(f"\n> {event['data'].get('text')}")
        elif event["kind"] != "text_delta":
            printer(event)


@ws.command("ls")
@hub_dir
@json_option
def ws_ls(data_dir: Path, as_json: bool) -> None:
    """Workstreams, newest first: state, spoke, model, and why a queued one waits."""
    data = _guard(lambda: _client(data_dir).request("GET", "/api/ws"))
    emit(data, as_json, lambda d: table(d, ["id", "state", "spoke", "model", "title"]))


@ws.command("cancel")
@hub_dir
@json_option
@click.argument("ws_id")
def ws_cancel(data_dir: Path, as_json: bool, ws_id: str) -> None:
    """Stop the turn WS_ID is working on (its tool processes are killed); it stays open."""
    data = _guard(lambda: _client(data_dir).request("POST", f"/api/ws/{ws_id}/cancel"))
    emit(data, as_json, lambda d: click.echo(f"{ws_id}: {d['state']}"))


@ws.command("close")
@hub_dir
@json_option
@click.argument("ws_id")
def ws_close(data_dir: Path, as_json: bool, ws_id: str) -> None:
    """Close WS_ID for good: its box goes, pending approvals are resolved, the transcript stays."""
    data = _guard(lambda: _client(data_dir).request("POST", f"/api/ws/{ws_id}/close"))
    emit(data, as_json, lambda d: click.echo(f"{ws_id}: {d['state']}"))
