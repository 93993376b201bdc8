"""``hub ws …``: agent workstreams, with replies streamed to the terminal as produced."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.common import data_dir_option, emit, fail, json_option, table
from cli.common import guarded as _guard
from cli.common import hub_client as _client

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")






class _Printer:
    """Human rendering of events: text streams, tool calls and approvals on stderr."""

    def __init__(self, ws_id: str) -> None:
        self.ws_id = ws_id
        self.streamed = False

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
            click.echo(f"? approval needed for {data.get('tool')} (call {data.get('call_id')}): "
                       f"hub ws approve {self.ws_id} {data.get('call_id')}  |  hub ws deny {self.ws_id} {data.get('call_id')}",
                       err=True)
        elif kind == "error":
            click.echo(f"error: {data.get('message')}", err=True)
        elif kind == "assigned":
            click.echo(f"[{self.ws_id} running on spoke {data.get('spoke')}]", err=True)


def _converse(data_dir: Path, as_json: bool, wait: bool, message: str, **kw: Any) -> None:
    client = _client(data_dir)
    if not wait:
        if kw.get("ws_id"):
            row = _guard(lambda: client.request("POST", f"/api/ws/{kw['ws_id']}/messages", {"message": message}))
        else:
            body = {"message": message, **{k: v for k, v in kw.items() if k != "ws_id"}}
            row = _guard(lambda: client.request("POST", "/api/ws", body))
        emit(row, as_json, lambda d: click.echo(d["id"]))
        return
    printer = _Printer(kw.get("ws_id") or "")

    def on_event(event: dict[str, Any]) -> None:
        if not as_json:
            printer(event)

    def run() -> dict[str, Any]:
        result: dict[str, Any] = client.send_and_wait(message, on_event=on_event, **kw)
        return result

    result = _guard(run)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"[{result['id']} {result['state']}]", err=True)
    if result["state"] == "error":
        sys.exit(1)


@click.group("ws")
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
@click.option("--no-wait", is_flag=True, help="Print the id and return at once.")
@click.argument("message")
def ws_new(data_dir: Path, as_json: bool, spoke: str | None, label: str | None, model: str | None,
           image: str | None, auto_approve: bool, no_wait: bool, message: str) -> None:
    if spoke and label:
        fail("give --spoke or --label, not both", 2)
    _converse(data_dir, as_json, not no_wait, message, spoke=spoke, label=label, model=model,
              image=image, auto_approve=auto_approve)


@ws.command("send")
@hub_dir
@json_option
@click.option("--no-wait", is_flag=True)
@click.argument("ws_id")
@click.argument("message")
def ws_send(data_dir: Path, as_json: bool, no_wait: bool, ws_id: str, message: str) -> None:
    _converse(data_dir, as_json, not no_wait, message, ws_id=ws_id)


def _decide(data_dir: Path, as_json: bool, ws_id: str, call_id: str, approve: bool, reason: str) -> None:
    body = {"approve": approve, "reason": reason}
    data = _guard(lambda: _client(data_dir).request("POST", f"/api/ws/{ws_id}/approvals/{call_id}", body))
    emit(data, as_json, lambda d: click.echo(f"{call_id}: {d['state']}"))


@ws.command("approve")
@hub_dir
@json_option
@click.argument("ws_id")
@click.argument("call_id")
def ws_approve(data_dir: Path, as_json: bool, ws_id: str, call_id: str) -> None:
    _decide(data_dir, as_json, ws_id, call_id, True, "")


@ws.command("deny")
@hub_dir
@json_option
@click.option("--reason", default="", help="Told to the model.")
@click.argument("ws_id")
@click.argument("call_id")
def ws_deny(data_dir: Path, as_json: bool, reason: str, ws_id: str, call_id: str) -> None:
    _decide(data_dir, as_json, ws_id, call_id, False, reason)


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
    data = _guard(lambda: _client(data_dir).request("GET", "/api/ws"))
    emit(data, as_json, lambda d: table(d, ["id", "state", "spoke", "model", "title"]))


@ws.command("cancel")
@hub_dir
@json_option
@click.argument("ws_id")
def ws_cancel(data_dir: Path, as_json: bool, ws_id: str) -> None:
    data = _guard(lambda: _client(data_dir).request("POST", f"/api/ws/{ws_id}/cancel"))
    emit(data, as_json, lambda d: click.echo(f"{ws_id}: {d['state']}"))


@ws.command("close")
@hub_dir
@json_option
@click.argument("ws_id")
def ws_close(data_dir: Path, as_json: bool, ws_id: str) -> None:
    data = _guard(lambda: _client(data_dir).request("POST", f"/api/ws/{ws_id}/close"))
    emit(data, as_json, lambda d: click.echo(f"{ws_id}: {d['state']}"))
