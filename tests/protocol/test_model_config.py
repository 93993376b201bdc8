"""The models-file format shared by hub.toml and a spoke's --models-file (protocol/model_config.py)."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.model_config import (
    DEFAULT_CONTEXT_WINDOW,
    ModelConfigError,
    ModelEntry,
    ModelsDocument,
    model_entry,
    parse_models_toml,
)

DOC = """
title = "ignored"
[models.local]
provider = "openai"
base_url = "http://127.0.0.1:8000/v1"
model = "qwen3-32b"
context_window = 32768
[models.claude]
provider = "anthropic"
model = "claude-opus-4-6"
api_key = "k"
[model]
default = "local"
fallback = ["claude"]
"""


def test_parse_returns_the_raw_tables_in_file_order() -> None:
    doc = parse_models_toml(DOC, "hub.toml")
    assert list(doc.models) == ["local", "claude"]
    assert doc.models["claude"] == {"provider": "anthropic", "model": "claude-opus-4-6", "api_key": "k"}
    assert doc.model == {"default": "local", "fallback": ["claude"]}
    assert parse_models_toml("", "empty.toml") == ModelsDocument()


@pytest.mark.parametrize(("text", "message"), [
    ("[models\n", r"^f\.toml: "),
    ("[models]\nlocal = 3\n", r"^f\.toml: \[models\.local\] must be a table$"),
])
def test_parse_errors_name_the_source(text: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        parse_models_toml(text, "f.toml")


def test_entry_keeps_absent_fields_absent() -> None:
    assert model_entry("x", {"model": "m"}) == ModelEntry(
        alias="x", provider="openai", model="m", base_url=None, api_key=None,
        context_window=DEFAULT_CONTEXT_WINDOW)
    entry = model_entry("y", {"provider": "anthropic", "model": "m", "base_url": "",
                              "api_key": "k", "context_window": "4096"})
    assert (entry.provider, entry.base_url, entry.api_key, entry.context_window) == ("anthropic", "", "k", 4096)


@pytest.mark.parametrize(("raw", "message"), [
    ({"provider": "gemini", "model": "m"},
     "model 'x': provider must be one of ('openai', 'anthropic'), not 'gemini'"),
    ({"provider": "openai"}, "model 'x': 'model' is required"),
    ({"model": ""}, "model 'x': 'model' is required"),
    ({"model": "m", "context_window": "big"}, "model 'x': context_window must be an integer"),
    ({"model": "m", "context_window": [1]}, "model 'x': context_window must be an integer"),
])
def test_entry_errors_name_the_alias(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelConfigError) as caught:
        model_entry("x", raw)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)
