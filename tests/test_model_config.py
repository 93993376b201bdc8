"""The hub's model configuration (hub/model_config.py): one layer per source, then the merge.

Strongest first: flags, environment, hub.toml. No processes: the functions are pure but for
reading the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hub import model_config as mc
from protocol.model_config import ModelConfigError, ModelsDocument

TOML = """
[models.local]
provider = "openai"
base_url = "http://127.0.0.1:8000/v1/"
model = "qwen3-32b"
[models.my-claude]
provider = "anthropic"
model = "claude-opus-4-6"
api_key = "file-key"
[model]
fallback = ["my-claude"]
"""


@pytest.fixture
def hub_toml(tmp_path: Path) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(TOML)
    return path


def test_file_layer_alone(hub_toml: Path) -> None:
    config = mc.load(hub_toml, env={})
    assert list(config.models) == ["local", "my-claude"]
    assert config.default == "local"  # the first alias when none is named
    assert config.fallback == ("my-claude",)
    local = config.models["local"]
    assert (local.url(), local.api_key, local.context_window) == ("http://127.0.0.1:8000/v1", "", 128_000)
    assert config.models["my-claude"].url() == "https://api.anthropic.com"
    assert [m.alias for m in config.chain(None)] == ["local", "my-claude"]


def test_no_file_no_models(tmp_path: Path) -> None:
    assert mc.load(tmp_path / "missing.toml", env={}) == mc.ModelsConfig()
    assert mc.load(None, env={}) == mc.ModelsConfig()
    assert mc.file_layer(None) == ModelsDocument()


def test_env_overrides_a_field_of_a_file_alias_and_defines_new_ones(hub_toml: Path) -> None:
    env = {"SPOKEHUB_MODEL_MY_CLAUDE_API_KEY": "env-key",
           "SPOKEHUB_MODEL_MY_GPU_MODEL": "llama", "SPOKEHUB_MODEL_MY_GPU_BASE_URL": "http://gpu/v1",
           "SPOKEHUB_MODEL_MY_GPU_CONTEXT_WINDOW": "8192", "UNRELATED": "x"}
    config = mc.load(hub_toml, env=env)
    assert config.models["my-claude"].api_key == "env-key"  # the file's alias, '-' spelt '_'
    gpu = config.models["my-gpu"]  # a new alias: lower-cased, '_' as '-'
    assert (gpu.provider, gpu.model, gpu.base_url, gpu.context_window) == ("openai", "llama", "http://gpu/v1", 8192)
    assert list(config.models) == ["local", "my-claude", "my-gpu"]


def test_env_layer_on_its_own() -> None:
    layer = mc.env_layer({"SPOKEHUB_MODEL_DEFAULT": "a", "SPOKEHUB_MODEL_FALLBACK": " b, ,c ",
                          "SPOKEHUB_MODEL_A_MODEL": "m"}, known_aliases=[])
    assert layer == ModelsDocument(models={"a": {"model": "m"}}, model={"default": "a", "fallback": ["b", "c"]})
    assert mc.env_layer({"SPOKEHUB_MODEL_DEFAULT": "", "SPOKEHUB_MODEL_FALLBACK": ""}, []) == ModelsDocument()


def test_flags_beat_env_beat_file(hub_toml: Path) -> None:
    env = {"SPOKEHUB_MODEL_DEFAULT": "my-claude", "SPOKEHUB_MODEL_FALLBACK": "local"}
    assert (mc.load(hub_toml, env=env).default, mc.load(hub_toml, env=env).fallback) == ("my-claude", ("local",))
    config = mc.load(hub_toml, env=env, default="local", fallback=["my-claude"])
    assert (config.default, config.fallback) == ("local", ("my-claude",))
    assert mc.flag_layer(None, []) == ModelsDocument()


def test_merge_lays_fields_over_one_another() -> None:
    config = mc.merge(ModelsDocument(models={"a": {"provider": "anthropic"}}, model={"default": "a"}),
                      ModelsDocument(models={"a": {"model": "m"}}))
    assert (config.models["a"].provider, config.models["a"].model, config.default) == ("anthropic", "m", "a")


@pytest.mark.parametrize(("env", "message"), [
    ({"SPOKEHUB_MODEL_DEFAULT": "nope"}, "model alias 'nope' is named as default/fallback but not configured"),
    ({"SPOKEHUB_MODEL_LOCAL_PROVIDER": "gemini"}, "model 'local': provider must be one of"),
    ({"SPOKEHUB_MODEL_X_PROVIDER": "openai"}, "model 'x': 'model' is required"),
    ({"SPOKEHUB_MODEL_LOCAL_CONTEXT_WINDOW": "lots"}, "model 'local': context_window must be an integer"),
])
def test_errors_are_config_errors(hub_toml: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(mc.ConfigError) as caught:
        mc.load(hub_toml, env=env)
    assert str(caught.value).startswith(message)
    assert mc.ConfigError is ModelConfigError  # what `hub serve` reports, exit 2


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "hub.toml"
    bad.write_text("[models.local\n")
    with pytest.raises(mc.ConfigError, match=f"^{bad}: "):
        mc.load(bad, env={})
