"""The verb table: the allowlist, its models, and id validation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from protocol import messages
from protocol.errors import ErrorCode, RemoteError
from protocol.verbs import BOX_ID_RE, VERBS, BoxRef, lookup, parse_params, parse_result
from tests.protocol.helpers import BOX, SAMPLES, WS

DESIGN_VERBS = {
    "box.create", "box.list", "box.exec", "box.logs", "box.destroy", "box.put_file",
    "box.get_file", "box.stats", "box.reap", "ws.start", "ws.send", "ws.approve",
    "ws.cancel", "ws.close", "spoke.info",
}  # fmt: skip

BAD_BOX_IDS = [
    "",
    "bx_",
    "bx_0123456789abcde",  # 15 hex digits
    "bx_0123456789abcdef0",  # 17
    "bx_0123456789ABCDEF",
    "bx_0123456789abcdeg",
    "BX_0123456789abcdef",
    "box_0123456789abcdef",
    " bx_0123456789abcdef",
    "bx_0123456789abcdef\n",
    "bx_../../etc/passwd",
]


def test_allowlist_matches_the_design() -> None:
    assert DESIGN_VERBS <= set(VERBS)
    # Beyond the design: a cheap round trip, re-attaching to an exec after a reconnect,
    # Docker's freezer and the interactive channels (PTYs, port previews): issue 14.
    assert set(VERBS) - DESIGN_VERBS == {"spoke.ping", "box.attach", "box.pause", "box.resume",
                                         "box.open", "box.input"}


@pytest.mark.parametrize("name", sorted(VERBS))
def test_every_verb_has_strict_param_and_result_models(name: str) -> None:
    verb = VERBS[name]
    assert verb.name == name
    for model in (verb.params, verb.result):
        assert issubclass(model, BaseModel)
        assert model.model_config.get("extra") == "forbid"
        assert model.model_config.get("frozen") is True
    assert verb.stream in ("none", "down", "up")
    assert verb.default_timeout_s > 0
    if verb.idempotency_field is not None:
        assert verb.idempotency_field in verb.params.model_fields
    params, result = SAMPLES[name]
    with pytest.raises(RemoteError) as err:
        parse_params(verb, {**params, "unexpected_field": 1})
    assert err.value.code is ErrorCode.INVALID
    assert isinstance(parse_result(verb, result), verb.result)


def test_stream_directions_and_idempotency() -> None:
    assert {n for n, v in VERBS.items() if v.stream == "down"} == {"box.exec", "box.attach",
                                                                    "box.get_file", "box.open"}
    assert {n for n, v in VERBS.items() if v.stream == "up"} == {"box.put_file"}
    assert VERBS["box.create"].idempotency_field == "box_id"
    assert VERBS["ws.start"].idempotency_field == "ws_id"


@pytest.mark.parametrize("name", ["box.nuke", "", "BOX.LIST", "box.list ", "hello", "auth", "$/chunk"])
def test_lookup_refuses_unknown_verbs(name: str) -> None:
    with pytest.raises(RemoteError) as err:
        lookup(name)
    assert err.value.code is ErrorCode.DENIED
    assert repr(name) in err.value.message


def test_lookup_known_verb() -> None:
    assert lookup("box.list") is VERBS["box.list"]


def test_good_ids_are_accepted() -> None:
    assert BOX_ID_RE.match(BOX)
    assert parse_params(VERBS["box.destroy"], {"box_id": BOX}) == BoxRef(box_id=BOX)
    assert parse_params(VERBS["ws.cancel"], {"ws_id": WS}).model_dump() == {"ws_id": WS}


@pytest.mark.parametrize("bad", BAD_BOX_IDS)
def test_bad_box_ids_are_rejected(bad: str) -> None:
    for verb, params in [
        ("box.destroy", {"box_id": bad}),
        ("box.create", {"box_id": bad, "image": "i"}),
        ("box.reap", {"keep": [BOX, bad]}),
        ("ws.start", {**SAMPLES["ws.start"][0], "box_id": bad}),
    ]:
        with pytest.raises(RemoteError) as err:
            parse_params(VERBS[verb], params)
        assert err.value.code is ErrorCode.INVALID, verb
        assert "box_id" in err.value.message or "keep" in err.value.message


@pytest.mark.parametrize("bad", [b.replace("bx_", "ws_", 1) for b in BAD_BOX_IDS] + [BOX])
def test_bad_ws_ids_are_rejected(bad: str) -> None:
    for verb in ("ws.send", "ws.cancel", "ws.close", "ws.approve", "ws.start"):
        params = {**SAMPLES[verb][0], "ws_id": bad}
        with pytest.raises(RemoteError) as err:
            parse_params(VERBS[verb], params)
        assert err.value.code is ErrorCode.INVALID and "ws_id" in err.value.message
    with pytest.raises(ValidationError):
        messages.WsEvent(ws_id=bad, sseq=1, kind="k")


@pytest.mark.parametrize(
    ("verb", "params", "field"),
    [
        ("box.create", {"box_id": BOX, "image": "i", "env": {"1BAD": "x"}}, "env"),
        ("box.create", {"box_id": BOX, "image": "i", "env": {"A=B": "x"}}, "env"),
        ("box.create", {"box_id": BOX, "image": ""}, "image"),
        ("box.create", {"box_id": BOX, "image": "i", "cpus": 0}, "cpus"),
        ("box.exec", {"box_id": BOX, "cmd": ["x"], "workdir": "relative"}, "workdir"),
        ("box.exec", {"box_id": BOX, "cmd": ["x"], "timeout_s": 1e9}, "timeout_s"),
        ("box.put_file", {"box_id": BOX, "path": "etc\x00passwd", "size": 1}, "path"),
        ("box.put_file", {"box_id": BOX, "path": "", "size": 1}, "path"),
        ("box.put_file", {"box_id": BOX, "path": "/d", "size": 1, "into_dir_name": "a/b"},
         "into_dir_name"),
        ("box.put_file", {"box_id": BOX, "path": "/d", "size": 1, "into_dir_name": ".."},
         "into_dir_name"),
        ("box.get_file", {"box_id": BOX, "path": "x" * 4097}, "path"),
        ("box.put_file", {"box_id": BOX, "path": "/f", "size": -1}, "size"),
        ("box.put_file", {"box_id": BOX, "path": "/f", "size": 1, "mode": 0o10000}, "mode"),
        ("box.logs", {"box_id": BOX, "tail": 0}, "tail"),
        ("ws.start", {**SAMPLES["ws.start"][0], "models": []}, "models"),
        ("ws.send", {"ws_id": WS, "message": ""}, "message"),
    ],
)
def test_field_constraints(verb: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteError) as err:
        parse_params(VERBS[verb], params)
    assert err.value.code is ErrorCode.INVALID
    assert err.value.message.startswith(f"{verb}: {field}")


def test_params_shape() -> None:
    assert parse_params(VERBS["box.list"], None) == VERBS["box.list"].params()
    with pytest.raises(RemoteError, match="params must be an object"):
        parse_params(VERBS["box.list"], [])
    with pytest.raises(RemoteError) as err:
        parse_params(VERBS["box.destroy"], None)
    assert err.value.code is ErrorCode.INVALID and "box_id" in err.value.message


def test_error_messages_list_at_most_three_problems() -> None:
    params = {"box_id": "x", "path": "x", "size": -1, "mode": -1, "junk": 1}
    with pytest.raises(RemoteError) as err:
        parse_params(VERBS["box.put_file"], params)
    assert err.value.message.count(";") == 2


def test_parse_result_errors_are_internal() -> None:
    with pytest.raises(RemoteError) as err:
        parse_result(VERBS["box.list"], {"boxes": "none"})
    assert err.value.code is ErrorCode.INTERNAL
    assert err.value.message.startswith("box.list result: boxes")
    with pytest.raises(RemoteError):
        parse_result(VERBS["spoke.ping"], None)


def test_models_are_immutable() -> None:
    ref = BoxRef(box_id=BOX)
    with pytest.raises(ValidationError):
        ref.box_id = "bx_ffffffffffffffff"  # type: ignore[misc]


def test_notification_tables_are_disjoint_and_strict() -> None:
    assert set(messages.FROM_SPOKE).isdisjoint(messages.FROM_HUB)
    for model in [*messages.FROM_SPOKE.values(), *messages.FROM_HUB.values()]:
        assert model.model_config.get("extra") == "forbid"
