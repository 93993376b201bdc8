"""Model configuration held at the hub: aliases, providers, keys, default and fallbacks.

Sources, strongest first: command-line flags, environment variables, ``hub.toml`` in the data
dir, built-in defaults. Keys stay at the hub: spokes reach hub-configured models only through
the hub's relay, with a session-bound token.

Environment: ``SPOKEHUB_MODEL_<ALIAS>_<FIELD>`` (FIELD one of PROVIDER, BASE_URL, MODEL,
API_KEY, CONTEXT_WINDOW; ALIAS upper-cased, '-' as '_'), ``SPOKEHUB_MODEL_DEFAULT`` and
``SPOKEHUB_MODEL_FALLBACK`` (comma-separated).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

PROVIDERS = ("openai", "anthropic")
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
_FIELDS = {"PROVIDER": "provider", "BASE_URL": "base_url", "MODEL": "model", "API_KEY": "api_key",
           "CONTEXT_WINDOW": "context_window"}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    alias: str
    provider: str
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
    provider = str(raw.get("provider", "openai"))
    if provider not in PROVIDERS:
        raise ConfigError(f"model {alias!r}: provider must be one of {PROVIDERS}, not {provider!r}")
    if not raw.get("model"):
        raise ConfigError(f"model {alias!r}: 'model' is required")
    try:
        window = int(raw.get("context_window", 128_000))
    except (TypeError, ValueError):
        raise ConfigError(f"model {alias!r}: context_window must be an integer") from None
    return ModelConfig(alias=alias, provider=provider, model=str(raw["model"]),
                       base_url=str(raw.get("base_url", "")), api_key=str(raw.get("api_key", "")),
                       context_window=window)


def load(config_file: Path | None, env: Mapping[str, str] | None = None,
         default: str | None = None, fallback: list[str] | None = None) -> ModelsConfig:
    env = os.environ if env is None else env
    raw_models: dict[str, dict[str, Any]] = {}
    section: dict[str, Any] = {}
    if config_file is not None and config_file.exists():
        try:
            doc = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{config_file}: {err}") from None
        for alias, raw in (doc.get("models") or {}).items():
            if not isinstance(raw, dict):
                raise ConfigError(f"{config_file}: [models.{alias}] must be a table")
            raw_models[alias] = dict(raw)
        section = dict(doc.get("model") or {})
    aliases = {a.upper().replace("-", "_"): a for a in raw_models}
    for key, value in env.items():
        if not key.startswith("SPOKEHUB_MODEL_") or key in ("SPOKEHUB_MODEL_DEFAULT", "SPOKEHUB_MODEL_FALLBACK"):
            continue
        rest = key[len("SPOKEHUB_MODEL_"):]
        for suffix, name in _FIELDS.items():
            if rest.endswith("_" + suffix):
                env_alias = rest[: -len(suffix) - 1]
                alias = aliases.get(env_alias, env_alias.lower().replace("_", "-"))
                aliases[env_alias] = alias
                raw_models.setdefault(alias, {})[name] = value
                break
    if env.get("SPOKEHUB_MODEL_DEFAULT"):
        section["default"] = env["SPOKEHUB_MODEL_DEFAULT"]
    if env.get("SPOKEHUB_MODEL_FALLBACK"):
        section["fallback"] = [s.strip() for s in env["SPOKEHUB_MODEL_FALLBACK"].split(",") if s.strip()]
    if default:
        section["default"] = default
    if fallback:
        section["fallback"] = list(fallback)
    models = {alias: _model(alias, raw) for alias, raw in raw_models.items()}
    config = ModelsConfig(models=models, default=section.get("default") or (next(iter(models), None)),
                          fallback=tuple(section.get("fallback") or ()))
    for name in ([config.default] if config.default else []) + list(config.fallback):
        if name not in models:
            raise ConfigError(f"model alias {name!r} is named as default/fallback but not configured")
    return replace(config)
