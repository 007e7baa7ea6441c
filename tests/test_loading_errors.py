"""Loading base models the ways users do, and the errors they get when something is wrong."""
import json

import pytest

from dice.adapters import ModelLoadError, adapter_class


def test_local_folder_loads_and_encodes(tiny_model):
    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    cond = adapter.encode_prompts(["a red cat", ""])
    assert cond.embeds.shape == (2, 77, 32) and adapter.text_dim == 32 and adapter.num_tokens == 77


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        adapter_class("sd15").from_pretrained("some-org/not-a-cached-model")
    message = str(err.value)
    assert "some-org/not-a-cached-model" in message and "HF_HUB_OFFLINE=1" in message and "local" in message


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        adapter_class("sd15").from_pretrained(str(tmp_path))


def test_missing_single_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        adapter_class("sd15").from_pretrained(str(tmp_path / "model.safetensors"))


def test_other_family_is_refused_with_what_it_looks_like(tmp_path):
    folder = tmp_path / "xl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ModelLoadError, match="sdxl model"):
        adapter_class("sd15").from_pretrained(str(folder))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="FluxPipeline"):
        adapter_class("sd15").from_pretrained(str(folder))
