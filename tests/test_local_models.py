"""A spoke's own models file (spoke/workstreams.py load_local_models): hub.toml's format."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.model_config import ModelConfigError
from spoke.agent.llm import ModelSpec
from spoke.workstreams import load_local_models


def test_no_file_no_models() -> None:
    assert load_local_models(None) == {}


def test_tables_become_model_specs(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[models.gpu-llama]\nbase_url = "http://127.0.0.1:8080/v1"\nmodel = "llama"\n'
                    'context_window = 65536\n'
                    '[models.claude]\nprovider = "anthropic"\nbase_url = "https://a"\nmodel = "c"\n'
                    'api_key = "k"\n')
    assert load_local_models(path) == {
        "gpu-llama": ModelSpec(alias="gpu-llama", provider="openai", base_url="http://127.0.0.1:8080/v1",
                               api_key="none", model="llama", context_window=65536),
        "claude": ModelSpec(alias="claude", provider="anthropic", base_url="https://a", api_key="k",
                            model="c", context_window=128_000),
    }


@pytest.mark.parametrize(("text", "message"), [
    ('[models.x]\nmodel = "m"\n', "model 'x': 'base_url' is required"),
    ('[models.x]\nbase_url = "u"\n', "model 'x': 'model' is required"),
    ('[models.x]\nprovider = "gemini"\nbase_url = "u"\nmodel = "m"\n', "model 'x': provider must be"),
    ('[models.x\n', ""),
])
def test_errors_name_the_file_and_alias(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ModelConfigError) as caught:
        load_local_models(path)
    assert str(caught.value).startswith(f"{path}: {message}")
