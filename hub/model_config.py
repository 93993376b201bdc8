"""Model configuration held at the hub: aliases, providers, keys, default and fallbacks.

Sources, strongest first: command-line flags, environment variables, ``hub.toml`` in the data
dir, built-in defaults. Keys stay at the hub: spokes reach hub-configured models only through
the hub's relay, with a session-bound token.

Environment: ``SPOKEHUB_MODEL_<ALIAS>_<FIELD>`` (FIELD one of PROVIDER, BASE_URL, MODEL,
API_KEY, CONTEXT_WINDOW; ALIAS upper-cased, '-' as '_'), ``SPOKEHUB_MODEL_DEFAULT`` and
``SPOKEHUB_MODEL_FALLBACK`` (comma-separated).

:func:`load` reads one layer per source (:func:`file_layer`, :func:`env_layer`,
:func:`flag_layer`), each a :class:`protocol.model_config.ModelsDocument` of raw tables, and
:func:`merge` lays them over one another field by field before anything is validated, so an
environment variable may complete a table the file started. The ``[models.ALIAS]`` format
and its validation are :mod:`protocol.model_config`'s, shared with the spoke's models file.

(The name says which "models": the LLM configuration. Pydantic models are in
:mod:`protocol.verbs` / :mod:`protocol.messages`; the LLM clients in :mod:`spoke.agent.llm`.)

Pinned by ``tests/test_model_config.py`` (the layers) and ``tests/test_readme.py`` (the
README's example is accepted).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.model_config import (
    ModelConfigError,
    ModelsDocument,
    Provider,
    model_entry,
    parse_models_toml,
)

DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
_FIELDS = {"PROVIDER": "provider", "BASE_URL": "base_url", "MODEL": "model", "API_KEY": "api_key",
           "CONTEXT_WINDOW": "context_window"}
_ENV_PREFIX = "SPOKEHUB_MODEL_"
_ENV_DEFAULT, _ENV_FALLBACK = _ENV_PREFIX + "DEFAULT", _ENV_PREFIX + "FALLBACK"

ConfigError = ModelConfigError  # what ``hub serve`` reports as a model configuration error


@dataclass(frozen=True)
class ModelConfig:
    alias: str
    provider: Provider
    model: str
    base_url: str = ""
    api_key: str = ""
    context_window: int = 128_000

    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS[self.provider]).rstrip("/")

    def public(self) -> dict[str, Any]:
        """What may be shown to API users: never the key."""
        return {"alias": self.alias, "provider": self.provider, "model": self.model,
                "base_url": self.url(), "context_window": self.context_window,
                "has_key": bool(self.api_key)}


@dataclass(frozen=True)
class ModelsConfig:
    models: dict[str, ModelConfig] = field(default_factory=dict)
    default: str | None = None
    fallback: tuple[str, ...] = ()

    def chain(self, alias: str | None) -> list[ModelConfig]:
        """The requested (or default) model followed by the fallbacks, without repeats."""
        first = alias or self.default
        names = [first] if first else []
        names += [n for n in self.fallback if n != first]
        return [self.models[n] for n in names if n in self.models]


def _model(alias: str, raw: Mapping[str, Any]) -> ModelConfig:
    entry = model_entry(alias, raw)
    return ModelConfig(alias=alias, provider=entry.provider, model=entry.model,
                       base_url=entry.base_url or "", api_key=entry.api_key or "",
                       context_window=entry.context_window)


def file_layer(config_file: Path | None) -> ModelsDocument:
    """The tables of ``hub.toml`` (none when there is no such file)."""
    if config_file is None or not config_file.exists():
        return ModelsDocument()
    return parse_models_toml(config_file.read_text(), str(config_file))


def env_layer(env: Mapping[str, str], known_aliases: list[str]) -> ModelsDocument:
    """The fields set by ``SPOKEHUB_MODEL_*`` variables. An alias is spelled upper-case with
    '_' for '-' in a variable name: one of ``known_aliases`` (the file's) when it matches
    one, else the lower-cased name with '-' for '_'."""
    aliases = {a.upper().replace("-", "_"): a for a in known_aliases}
    models: dict[str, dict[str, Any]] = {}
    for key, value in env.items():
        if not key.startswith(_ENV_PREFIX) or key in (_ENV_DEFAULT, _ENV_FALLBACK):
            continue
        rest = key[len(_ENV_PREFIX):]
        for suffix, name in _FIELDS.items():
            if rest.endswith("_" + suffix):
                env_alias = rest[: -len(suffix) - 1]
                alias = aliases.get(env_alias, env_alias.lower().replace("_", "-"))
                aliases[env_alias] = alias
                models.setdefault(alias, {})[name] = value
                break
    section: dict[str, Any] = {}
    if env.get(_ENV_DEFAULT):
        section["default"] = env[_ENV_DEFAULT]
    if env.get(_ENV_FALLBACK):
        section["fallback"] = [s.strip() for s in env[_ENV_FALLBACK].split(",") if s.strip()]
    return ModelsDocument(models=models, model=section)


def flag_layer(default: str | None, fallback: list[str] | None) -> ModelsDocument:
    """``hub serve --default-model`` / ``--fallback-model`` (only when given)."""
    section: dict[str, Any] = {}
    if default:
        section["default"] = default
    if fallback:
        section["fallback"] = list(fallback)
    return ModelsDocument(model=section)


def merge(*layers: ModelsDocument) -> ModelsConfig:
    """Lay ``layers`` (weakest first) over one another field by field, then validate: every
    table (:func:`protocol.model_config.model_entry`), and that the default and fallbacks
    are configured aliases. The default defaults to the first alias."""
    raw_models: dict[str, dict[str, Any]] = {}
    section: dict[str, Any] = {}
    for layer in layers:
        for alias, raw in layer.models.items():
            raw_models.setdefault(alias, {}).update(raw)
        section.update(layer.model)
    models = {alias: _model(alias, raw) for alias, raw in raw_models.items()}
    config = ModelsConfig(models=models, default=section.get("default") or (next(iter(models), None)),
                          fallback=tuple(section.get("fallback") or ()))
    for name in ([config.default] if config.default else []) + list(config.fallback):
        if name not in models:
            raise ConfigError(f"model alias {name!r} is named as default/fallback but not configured")
    return config


def load(config_file: Path | None, env: Mapping[str, str] | None = None,
         default: str | None = None, fallback: list[str] | None = None) -> ModelsConfig:
    """The hub's model configuration: ``config_file`` (``hub.toml``), then ``env`` (default:
    the process environment), then the flags, each overriding the one before."""
    from_file = file_layer(config_file)
    return merge(from_file, env_layer(os.environ if env is None else env, list(from_file.models)),
                 flag_layer(default, fallback))
