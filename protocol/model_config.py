"""The shape of a models file: ``[models.ALIAS]`` tables and a ``[model]`` table, in TOML.

The hub's ``hub.toml`` (:mod:`hub.model_config`) and a spoke's own ``--models-file``
(:func:`spoke.workstreams.load_local_models`) are the same format, and hub/ and spoke/ share
only protocol/, so the pure part lives here: parsing a document's text into raw tables
(:func:`parse_models_toml`) and validating one raw table into a neutral
:class:`ModelEntry` (:func:`model_entry`). No file reading, and no side's defaults: the hub
fills in provider base URLs and merges environment and flag layers over the raw tables first;
the spoke requires ``base_url``, since it calls the endpoint directly.

Errors are :class:`ModelConfigError` (a :class:`ValueError`) naming the alias or the file.

Pinned by ``tests/protocol/test_model_config.py``; the hub's layering by
``tests/test_model_config.py``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

Provider = Literal["openai", "anthropic"]
PROVIDERS: tuple[Provider, ...] = ("openai", "anthropic")
DEFAULT_CONTEXT_WINDOW = 128_000


class ModelConfigError(ValueError):
    """A models file or table that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class ModelsDocument:
    """The raw tables of a models document: ``models`` by alias (each a plain dict, not
    validated yet, so layers can be merged field by field) and the ``[model]`` table
    (``default``, ``fallback``)."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """One validated ``[models.ALIAS]`` table. ``base_url`` and ``api_key`` are None when
    the table leaves them out, so each side applies its own default."""

    alias: str
    provider: Provider
    model: str
    base_url: str | None = None
    api_key: str | None = None
    context_window: int = DEFAULT_CONTEXT_WINDOW


def parse_models_toml(text: str, source: str) -> ModelsDocument:
    """The ``[models.*]`` and ``[model]`` tables of a models document's TOML ``text``
    (``source`` names it in errors, e.g. the file's path). Other tables are ignored."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ModelConfigError(f"{source}: {err}") from None
    models: dict[str, dict[str, Any]] = {}
    for alias, raw in (doc.get("models") or {}).items():
        if not isinstance(raw, dict):
            raise ModelConfigError(f"{source}: [models.{alias}] must be a table")
        models[alias] = dict(raw)
    return ModelsDocument(models=models, model=dict(doc.get("model") or {}))


def model_entry(alias: str, raw: Mapping[str, Any]) -> ModelEntry:
    """Validate one raw ``[models.ALIAS]`` table: ``provider`` one of :data:`PROVIDERS`
    (default openai), ``model`` required, ``context_window`` an integer."""
    provider = str(raw.get("provider", "openai"))
    if provider not in PROVIDERS:
        raise ModelConfigError(f"model {alias!r}: provider must be one of {PROVIDERS}, not {provider!r}")
    if not raw.get("model"):
        raise ModelConfigError(f"model {alias!r}: 'model' is required")
    try:
        window = int(raw.get("context_window", DEFAULT_CONTEXT_WINDOW))
    except (TypeError, ValueError):
        raise ModelConfigError(f"model {alias!r}: context_window must be an integer") from None
    return ModelEntry(
        alias=alias,
        provider=cast(Provider, provider),
        model=str(raw["model"]),
        base_url=str(raw["base_url"]) if "base_url" in raw else None,
        api_key=str(raw["api_key"]) if "api_key" in raw else None,
        context_window=window,
    )
