"""schemathesis against a real hub (TLS, its self-signed certificate) with a real spoke (wss,
Docker) and the scripted LLM: every operation of ``GET /api/openapi.json``, called with
generated requests (schema examples, boundary and negative coverage cases, random positive and
negative ones) as the local admin.

It must find no 500, no answer that breaks the operation's documented schema (status code,
content type, body, headers), and no stack trace in any body or in the hub's log. Bounded: at
most :data:`MAX_EXAMPLES` random examples per operation, one pass of each phase, and a time
cap (:data:`TIME_CAP_S`): a run that reaches the cap stops and says which operations it did not
reach; it does not fail (tests never fail on wall-clock time). Operations that would destroy
the run's own setup or never end are left out in :data:`LEFT_OUT`, each with its reason.

Path parameters are generated, and on some operations an id from the setup (a box, a
workstream, its run) is used instead (:data:`REAL_IDS`, schemathesis dictionaries), so the
handlers behind the 404 are reached too. What it found and what was fixed is kept as plain
regression tests in tests/test_openapi_regressions.py.

Why the engine (``schemathesis.engine``, what ``st run`` drives) rather than the pytest
plugin: the plugin's ``from_fixture`` loader, needed for a hub a fixture starts, writes
``Node._nodeid``, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import events, from_schema

from tests.cluster import Hub, Spoke, wait_until

MAX_EXAMPLES = 20
TIME_CAP_S = 180
IMAGE = "spokehub-sandbox:bookworm"

# "METHOD /path" -> why schemathesis does not call it.
LEFT_OUT: dict[str, str] = {
    "GET /api/ws/{id}/stream": "an endless stream (NDJSON or SSE); pinned by "
    "tests/hub/test_fleet_memory.py::test_ws_stream_as_sse",
    "GET /api/events/stream": "an endless SSE stream; pinned by tests/test_fleet_api.py::"
    "test_events_stream_delivers_a_join_live_and_resumes",
    "GET /mcp": "an MCP session's endless event stream; MCP is tested with the real client "
    "in tests/test_mcp.py",
    "POST /mcp": "JSON-RPC of the MCP protocol, not REST; tested with the real MCP client in "
    "tests/test_mcp.py",
    "DELETE /mcp": "ends an MCP session; tested in tests/test_mcp.py",
    "GET /api/openapi.json": "the document the run loads (schemathesis does not call it); read "
    "without credentials by tests/test_openapi.py",
    "DELETE /api/apikeys/{id}": "could revoke the admin key the run itself uses; covered by "
    "tests/test_roles.py",
    "DELETE /api/spokes/{name}": "could revoke the run's spoke; covered by "
    "tests/test_enrollment.py",
    "POST /api/spokes/{name}/ping": "a valid body asks for up to a million round trips (the "
    "coverage phase sends the maximum); covered by tests/test_openapi_regressions.py",
}
# The operations that get one of the setup's real ids instead of a generated one: half the
# time where the request has more to vary (a body, a query), a tenth where the id is all
# there is (every such case is the same request). Not DELETE /api/boxes/{id} nor POST
# /api/ws/{id}/close (they would end the box or workstream the others need), nor GET
# /api/ws/{id}/events (its `wait` long-polls up to 60 s on a real workstream).
REAL_IDS = {
    "box": {"GET /api/boxes/{id}/logs": 0.5, "POST /api/boxes/{id}/exec": 0.5,
            "PUT /api/boxes/{id}/file": 0.5, "GET /api/boxes/{id}/file": 0.5,
            "GET /api/boxes/{id}/stats": 0.1},
    "ws": {"POST /api/ws/{id}/messages": 0.5, "POST /api/ws/{id}/approvals/{call_id}": 0.5,
           "GET /api/ws/{id}": 0.1, "POST /api/ws/{id}/cancel": 0.1},
    "run": {"GET /api/runs/{id}": 0.1, "GET /api/runs/{id}/inspect": 0.1},
}
ENDS_THE_SETUP = ("DELETE /api/boxes/{id}", "POST /api/ws/{id}/close")
SLOW_WITH_REAL_IDS = ("GET /api/boxes/{id}/stats", "GET /api/runs/{id}/inspect")
# Checks left off, with the reason.
CHECKS_OFF = {
    # The hub judges more than a schema can say (a name already taken, a workstream that is
    # closed, an image the spoke's policy refuses, a multi-use token's name length), and
    # answers it 400 `invalid` as documented; this check wants such requests to succeed.
    "positive_data_acceptance": {"enabled": False},
}
TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/', "aiohttp.web_exceptions",
                 "pydantic_core._pydantic_core", "Error handling request")


TIMES: dict[str, float] = {}  # seconds spent per operation, for the summary line


@schemathesis.check
def no_stack_trace(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """No answer may carry a stack trace or an exception's internals."""
    text = response.content.decode("utf-8", "replace") if response.content else ""
    for marker in TRACE_MARKERS:
        if marker in text:
            raise AssertionError(f"a stack trace in the body ({marker!r}): {text[:300]}")


def _setup(hub: Hub, spoke: Spoke) -> dict[str, str]:
    """A box and an idle workstream (with its run) for the ids the run aims at."""
    client = hub.client()
    box = client.request("POST", "/api/boxes", {"spoke": spoke.name, "image": IMAGE})
    ws = client.request("POST", "/api/ws", {"message": "hello", "spoke": spoke.name})
    wait_until(lambda: client.request("GET", f"/api/ws/{ws['id']}")["state"] == "idle",
               what="the workstream idle")
    run_id = client.request("GET", f"/api/ws/{ws['id']}")["run_id"]
    return {"box": box["id"], "ws": ws["id"], "run": run_id}


def config_for(hub: Hub, ids: dict[str, str]) -> schemathesis.Config:
    """The run's configuration: the admin key, the hub's certificate unchecked (loopback, a
    hub this test started), the bounds, the left-out operations, the real ids."""
    key = json.loads((hub.dir / "admin.json").read_text())["api_key"]
    operations: list[dict[str, Any]] = [
        {"include-name": name, "enabled": False} for name in LEFT_OUT]
    # Ids taken from earlier answers are not reused where a real one is slow: a workstream's
    # events long-poll up to `wait` (60 s; `wait` is mostly short too), and a box's stats
    # take the Docker engine a second or two (and the id is all there is to vary).
    no_reuse = {"extra-data-sources": {"responses": False}}
    fresh_ids = {"fuzzing": no_reuse, "coverage": no_reuse, "examples": no_reuse}
    operations.append({
        "include-name": "GET /api/ws/{id}/events", "phases": fresh_ids,
        "parameters": {"query.wait": {"dictionary": "short-waits", "probability": 0.9}}})
    # Nor where it would end the box or workstream of the setup (their own are generated).
    operations += [{"include-name": name, "phases": fresh_ids} for name in ENDS_THE_SETUP]
    for kind, chances in REAL_IDS.items():
        operations += [{"include-name": name, "parameters": {
            "path.id": {"dictionary": kind, "probability": chance}},
            **({"phases": fresh_ids} if name in SLOW_WITH_REAL_IDS else {})}
            for name, chance in chances.items()]
    return schemathesis.Config.from_dict({
        "seed": int(os.environ.get("SPOKEHUB_FUZZ_SEED", "12")),  # another seed, another run
        "headers": {"Authorization": f"Bearer {key}"},
        "tls-verify": False,
        "request-timeout": 60,
        "generation": {"max-examples": MAX_EXAMPLES},
        "checks": CHECKS_OFF,
        "phases": {"stateful": {"enabled": False}},
        "dictionaries": {"short-waits": {"values": [0, 0.1]},
                         **{kind: {"values": [value]} for kind, value in ids.items()}},
        "operations": operations,
    })


def run_schemathesis(hub: Hub, ids: dict[str, str]) -> tuple[list[str], events.EngineFinished]:
    """Every failure of the run, as text with the request that shows it, and the run's end."""
    schema = schemathesis.openapi.from_url(f"{hub.url}/api/openapi.json",
                                           config=config_for(hub, ids), verify=False)
    found: list[str] = []
    finished: events.EngineFinished | None = None
    # The cap is ours, not schemathesis's `max-time`: with that set, the engine spends all the
    # time left on more fuzzing rounds; without it, it makes one pass, which is the bound.
    deadline = time.monotonic() + TIME_CAP_S
    stream = from_schema(schema).execute()
    for event in stream:
        if time.monotonic() > deadline:
            stream.stop()
        if isinstance(event, events.ScenarioFinished):
            label = event.recorder.label
            if event.recorder.cases:
                TIMES[label] = TIMES.get(label, 0.0) + event.elapsed_time
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        found.append(f"{event.recorder.label}: {check.name}: {failure.title}: "
                                     f"{failure.message[:500]}\n  "
                                     f"{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            found.append(f"{event.label}: error: {event.info.format()[:800]}")
        elif isinstance(event, events.FatalError):
            found.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            finished = event
            found += [f"after the run: {f.title}: {f.message[:500]}" for f in event.failures]
    assert finished is not None
    return sorted(set(found)), finished


@pytest.mark.timeout(TIME_CAP_S + 240)
def test_the_api_keeps_its_spec(model_hub: Hub, model_spoke: Spoke) -> None:
    ids = _setup(model_hub, model_spoke)
    found, finished = run_schemathesis(model_hub, ids)
    slowest = ", ".join(f"{label} {seconds:.0f} s" for label, seconds
                        in sorted(TIMES.items(), key=lambda kv: -kv[1])[:5])
    print(f"\nschemathesis: {finished.stop_reason.value} after {finished.running_time:.0f} s, "
          f"{len(TIMES)} operations called; slowest: {slowest}")
    not_called = sorted(set(operations(model_hub)) - set(TIMES) - set(LEFT_OUT))
    if finished.stop_reason.value == "completed":
        assert not not_called, f"operations schemathesis did not call: {not_called}"
    else:  # past the cap: said, not failed
        print(f"schemathesis stopped ({finished.stop_reason.value}) before {not_called}")
    assert not found, f"{len(found)} failures:\n" + "\n".join(found)
    assert model_hub.proc is not None
    assert not hub_tracebacks(model_hub.proc.output())


def operations(hub: Hub) -> list[str]:
    """``METHOD /path`` of every operation the hub's document lists."""
    spec = hub.client().request("GET", "/api/openapi.json")
    return [f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops]


def hub_tracebacks(log: str) -> list[str]:
    """The tracebacks in the hub's log, but for aiohttp refusing a malformed request in its
    HTTP parser (a NUL in a header: schemathesis probes for it) before any hub code runs:
    it answers 400 itself and logs the parser's exception."""
    blocks = log.split("Traceback (most recent call last):")[1:]
    return [block[:3000] for block in blocks
            if "aiohttp.http_exceptions.BadHttpMessage" not in block.split("\n20", 1)[0]]
