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


def test_hub_models_are_recorded_with_the_cached_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from dice.adapters.base import absolute_if_local, hub_revision

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--some-org--some-model"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert hub_revision("some-org/some-model") == commit  # what from_pretrained loads offline
    assert hub_revision("some-org/not-cached", "v1.0") == "v1.0"
    assert hub_revision(str(tmp_path)) is None  # a local folder: its absolute path says it all
    monkeypatch.chdir(tmp_path)
    assert absolute_if_local("hub") == str(tmp_path / "hub") and absolute_if_local("some-org/some-model") == "some-org/some-model"
