"""What the OpenAPI work found, kept as plain requests against a real hub (TLS, loopback).

Found by schemathesis (tests/test_openapi_fuzz.py), each a 500 or a broken answer before:

- ``GET /api/ws/{id}/events?wait=null``: ``float()`` of the raw value raised (500);
- ``GET /api/events?after=<30 digits>``: SQLite refused an integer past 64 bits (500);
- ``GET /static/%0D``: a CR in the 404's reason made aiohttp raise (500);
- every 405 lacked the ``Allow`` header HTTP requires (the error middleware dropped it).

Found while declaring the parameters and bodies:

- ``?after=²`` (and ``limit``, ``before``, ``tail``, ``Last-Event-ID``): ``str.isdigit()`` is
  true of ``²``, which ``int()`` refuses (500);
- ``?tail=abc`` on a box's logs fell back to 200 lines silently instead of saying ``invalid``;
- a join token or user named ``"name\\n"`` was accepted (the patterns' ``$`` also matches
  before a final newline under ``re.match``).

And the operations the fuzz leaves out, called here with names that match nothing.
"""

from __future__ import annotations

from tests.cluster import Hub
from tests.web_client import Answer, Web, admin_key, bearer

NO_BOX = "bx_0000000000000000"


def call(hub: Hub, method: str, path: str, body: object = None) -> Answer:
    return Web(hub).call(method, path, body, headers=bearer(admin_key(hub)))


def assert_invalid(answer: Answer, fragment: str) -> None:
    assert answer.status == 400, (answer.status, answer.body)
    assert answer.json()["error"]["code"] == "invalid" and fragment in answer.message, answer.body


def test_a_bad_wait_is_a_400_not_a_500(hub: Hub) -> None:
    for raw in ("null", "w", "nan", "inf"):
        assert_invalid(call(hub, "GET", f"/api/ws/0/events?wait={raw}&wait=null"),
                       "wait must be a number of seconds")
    assert call(hub, "GET", "/api/ws/ws_0000000000000000/events?wait=0.5").status == 404


def test_cursors_past_64_bits_are_a_400_not_a_500(hub: Hub) -> None:
    huge = "182962688853177777118808899584"
    assert_invalid(call(hub, "GET", f"/api/events?after={huge}&limit=733"), "after must be")
    assert_invalid(call(hub, "GET", f"/api/audit?before={huge}"), "before must be")
    assert_invalid(call(hub, "GET", f"/api/ws/ws_0000000000000000/events?after={huge}"),
                   "after must be")
    biggest = call(hub, "GET", f"/api/events?after={2**63 - 1}")
    assert biggest.status == 200 and biggest.json()["events"] == []


def test_unicode_digits_are_a_400_not_a_500(hub: Hub) -> None:
    two = "%C2%B2"  # ², which str.isdigit() calls a digit
    for path, name in [(f"/api/events?after={two}", "after"), (f"/api/events?limit={two}", "limit"),
                       (f"/api/audit?before={two}", "before"),
                       (f"/api/ws/ws_0000000000000000/events?after={two}", "after"),
                       (f"/api/boxes/{NO_BOX}/logs?tail={two}", "tail")]:
        assert_invalid(call(hub, "GET", path), f"{name} must be")
    stream = Web(hub).call("GET", "/api/events/stream",
                           headers={**bearer(admin_key(hub)), "Last-Event-ID": "²"})
    assert_invalid(stream, "Last-Event-ID must be an integer")


def test_a_bad_log_tail_is_a_400(hub: Hub) -> None:
    for raw in ("abc", "0", "100001", "-5"):
        assert_invalid(call(hub, "GET", f"/api/boxes/{NO_BOX}/logs?tail={raw}"), "tail must be")
    assert call(hub, "GET", f"/api/boxes/{NO_BOX}/logs?tail=200").status == 404
    assert call(hub, "GET", f"/api/boxes/{NO_BOX}/logs?tail=").status == 404  # empty: default


def test_a_control_character_in_a_static_path_is_a_404_not_a_500(hub: Hub) -> None:
    for path in ("/static/%0D", "/static/a%0Db%09", "/static/%C3%A9"):
        answer = Web(hub).call("GET", path)
        assert answer.status == 404, (path, answer.status, answer.body)
        assert answer.json()["error"]["code"] == "not_found"
    assert hub.proc is not None and "Traceback" not in hub.proc.output()


def test_a_405_says_which_methods_are_allowed(hub: Hub) -> None:
    for method, path, allowed in [("TRACE", "/api/info", "GET"),
                                  ("PATCH", "/api/boxes", "POST"),
                                  ("PUT", "/api/tokens/tok_0000000000000000", "DELETE")]:
        answer = call(hub, method, path)
        assert answer.status == 405, (method, path, answer.body)
        assert allowed in answer.headers["Allow"], answer.headers
        assert answer.json()["error"]["code"] == "invalid"


def test_names_with_a_newline_are_refused(hub: Hub) -> None:
    assert_invalid(call(hub, "POST", "/api/tokens", {"name": "laptop\n"}), "bad spoke name")
    assert_invalid(call(hub, "POST", "/api/users", {"name": "dave\n", "role": "viewer"}),
                   "bad user name")
    assert call(hub, "POST", "/api/tokens", {"name": "laptop"}).status == 201


def test_operations_the_fuzz_leaves_out(hub: Hub) -> None:
    """``POST /api/spokes/{name}/ping`` and ``DELETE /api/spokes/{name}`` with a name that is
    no spoke, and ping's body checks, in the documented shapes."""
    gone = call(hub, "POST", "/api/spokes/nowhere/ping", {"count": 1})
    assert gone.status == 503 and gone.json()["error"]["code"] == "unavailable"
    assert_invalid(call(hub, "POST", "/api/spokes/nowhere/ping", {"count": 0}),
                   "count must be 1..1000000")
    assert_invalid(call(hub, "POST", "/api/spokes/nowhere/ping", {"count": True}),
                   "field 'count' must be of type int")
    revoke = call(hub, "DELETE", "/api/spokes/nowhere")
    assert revoke.status == 404 and revoke.json()["error"]["code"] == "not_found"
