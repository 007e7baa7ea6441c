"""Sharpeners as Hub repositories: folder layout, model card, offline loading by repo id, push_to_hub, export."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants

import dice
from dice.checkpoint import CONFIG_NAME, SharpenerConfig, load_sharpener, save_sharpener
from dice.experiments import ExperimentNotFound, validation_grid_path
from dice import Sharpener

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "someone/dice-tiny-sd15"
HUB_FILES = {"config.json", "model.safetensors", "README.md"}


def trained_sharpener(base_model: str, seed: int = 0) -> Sharpener:
    torch.manual_seed(seed)
    sharpener = Sharpener(32)
    sharpener.config = SharpenerConfig(
        family="sd15", base_model=base_model, dim=32, num_tokens=77, step=5,
        training_options={"guidance_scale": 5.0, "learning_rate": 2e-4, "resolution": 32, "max_train_steps": 5},
    )
    return sharpener


def assert_same_weights(a: Sharpener, b: Sharpener) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], value), name


def card_metadata(readme: Path) -> dict:
    _, front, _ = readme.read_text().split("---\n", 2)
    return yaml.safe_load(front)


def add_to_hub_cache(cache: Path, repo_id: str, files: Path, revision: str = "main") -> str:
    """What the Hugging Face cache holds after a download: refs/<revision> -> snapshots/<commit>/<files>."""
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A private, empty Hugging Face cache (offline, as in every test)."""
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def fake_upload(monkeypatch):
    """Stand in for the Hub's HTTP API: record what create_repo / upload_folder would send."""
    calls = {"create_repo": [], "uploads": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        calls["uploads"].append({"repo_id": repo_id, "files": files, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_hub_folder_layout_card_and_round_trip(tmp_path):
    sharpener = trained_sharpener("stable-diffusion-v1-5/stable-diffusion-v1-5")
    sharpener.save_pretrained(tmp_path / "hub")
    assert {p.name for p in (tmp_path / "hub").iterdir()} == HUB_FILES
    # config.json holds exactly what a checkpoint's sharpener.json holds.
    save_sharpener(tmp_path / "ckpt", sharpener, sharpener.config)
    assert json.loads((tmp_path / "hub" / "config.json").read_text()) == json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())

    meta = card_metadata(tmp_path / "hub" / "README.md")
    assert meta["library_name"] == "dice" and meta["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert meta["tags"][:2] == ["dice", "text-to-image"] and "sd15" in meta["tags"]
    body = (tmp_path / "hub" / "README.md").read_text()
    assert "dice.apply(pipe" in body and "StableDiffusionPipeline" in body and "| learning_rate | `0.0002` |" in body

    for loaded in (Sharpener.from_pretrained(tmp_path / "hub"), dice.load_sharpener(tmp_path / "hub")[0]):
        assert_same_weights(sharpener, loaded)
        assert loaded.config == sharpener.config and not loaded.training


def test_local_base_model_stays_out_of_the_card_metadata(tmp_path):
    sharpener = trained_sharpener(str(tmp_path / "my-local-model"))
    sharpener.save_pretrained(tmp_path / "hub")
    meta = card_metadata(tmp_path / "hub" / "README.md")
    assert "base_model" not in meta  # the Hub rejects a base_model that is not a model id
    assert str(tmp_path / "my-local-model") in (tmp_path / "hub" / "README.md").read_text()


def test_a_sharpener_without_config_cannot_be_saved_as_hub_folder(tmp_path):
    with pytest.raises(ValueError, match="no config"):
        Sharpener(32).save_pretrained(tmp_path / "hub")


def test_loads_by_repo_id_and_revision_from_the_offline_cache(hub_cache, tmp_path):
    main, tagged = trained_sharpener("a/b", seed=0), trained_sharpener("a/b", seed=1)
    main.save_pretrained(tmp_path / "main")
    tagged.save_pretrained(tmp_path / "v1")
    add_to_hub_cache(hub_cache, REPO_ID, tmp_path / "main")
    add_to_hub_cache(hub_cache, REPO_ID, tmp_path / "v1", revision="v1")
    assert os.environ["HF_HUB_OFFLINE"] == "1"

    assert_same_weights(main, Sharpener.from_pretrained(REPO_ID))
    assert_same_weights(tagged, Sharpener.from_pretrained(REPO_ID, revision="v1"))
    loaded, config = load_sharpener(REPO_ID, revision="v1", family="sd15", dim=32)
    assert_same_weights(tagged, loaded)
    assert config == tagged.config and loaded.config == config
    with pytest.raises(ValueError, match="trained for sd15"):
        load_sharpener(REPO_ID, family="sdxl")


def test_missing_repo_offline_is_one_clear_error(hub_cache):
    with pytest.raises(ExperimentNotFound) as err:
        load_sharpener("someone/not-downloaded")
    message = str(err.value)
    assert "\n" not in message and "someone/not-downloaded" in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download someone/not-downloaded" in message


def test_a_hub_model_that_is_not_a_sharpener_is_refused(hub_cache, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"hidden_size": 32}))
    (tmp_path / "other" / "model.safetensors").write_bytes(b"")
    add_to_hub_cache(hub_cache, "someone/bert", tmp_path / "other")
    with pytest.raises(ValueError, match="not a dice sharpener config: it has no family, base_model, dim"):
        load_sharpener("someone/bert")


def test_push_to_hub_uploads_the_hub_folder(fake_upload, hub_cache, tmp_path):
    sharpener = trained_sharpener("a/b")
    url = sharpener.push_to_hub(REPO_ID, private=True)
    assert url.endswith("/commit/0")
    assert fake_upload["create_repo"] == [(REPO_ID, {"private": True, "exist_ok": True})]
    (upload,) = fake_upload["uploads"]
    assert upload["repo_id"] == REPO_ID and set(upload["files"]) == HUB_FILES
    assert f'dice.apply(pipe, "{REPO_ID}")' in upload["files"]["README.md"].decode()
    # What was uploaded is what a later download loads.
    (tmp_path / "remote").mkdir()
    for name, data in upload["files"].items():
        (tmp_path / "remote" / name).write_bytes(data)
    add_to_hub_cache(hub_cache, REPO_ID, tmp_path / "remote")
    assert_same_weights(sharpener, Sharpener.from_pretrained(REPO_ID))


@pytest.fixture
def trained_run(tmp_path, tiny_model):
    """exps/00000-run/checkpoint-5 (the checkpoint layout) with the run's validation grid of step 5."""
    from PIL import Image

    root = tmp_path / "exps"
    sharpener = trained_sharpener(str(tiny_model("sd15")))
    save_sharpener(root / "00000-run" / "checkpoint-5", sharpener, sharpener.config)
    grid = validation_grid_path(root / "00000-run", 5)
    grid.parent.mkdir()
    Image.new("RGB", (6, 4), "red").save(grid)
    return root, sharpener, grid


def test_export_turns_a_checkpoint_into_a_hub_folder(trained_run, fake_upload, tmp_path, capsys):
    from dice.export import main
    from dice.sample_cli import build_parser, resolve

    root, sharpener, grid = trained_run
    out = main(["0", str(tmp_path / "out"), "--exps_root", str(root), "--base_model", "someone/tiny-sd15",
                "--push_to_hub", REPO_ID])
    files = {p.name for p in out.iterdir()}
    assert files == HUB_FILES | {"validation_grid.png"}
    assert (out / "validation_grid.png").read_bytes() == grid.read_bytes()
    assert "![validation grid](validation_grid.png)" in (out / "README.md").read_text()
    assert card_metadata(out / "README.md")["base_model"] == "someone/tiny-sd15"
    loaded, config = load_sharpener(out)
    assert_same_weights(sharpener, loaded)
    assert config.base_model == "someone/tiny-sd15" and config.step == 5
    assert loaded.validation_grid == out / "validation_grid.png"
    # sample.py takes the folder; the base model named in its config is checked before anything loads.
    from dice.adapters.base import ModelLoadError

    with pytest.raises(ModelLoadError, match="'someone/tiny-sd15' is not a local folder or file"):
        resolve(build_parser().parse_args(["--sharpener_path", str(out)]))
    args = ["--sharpener_path", str(out), "--pretrained_model_name_or_path", sharpener.config.base_model]
    plan = resolve(build_parser().parse_args(args))
    assert plan["sharpener_name"] == "out" and plan["family"] == "sd15" and plan["sharpener"] == str(out / "model.safetensors")
    # The upload is the exported folder, byte for byte.
    (upload,) = fake_upload["uploads"]
    assert upload["files"] == {name: (out / name).read_bytes() for name in files}
    assert "uploaded to https://huggingface.co/" + REPO_ID in capsys.readouterr().out


def test_export_refuses_a_non_empty_folder_and_writes_nothing(trained_run, tmp_path, capsys):
    from dice.export import main

    root, _, _ = trained_run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as err:
        main(["0", str(tmp_path / "out"), "--exps_root", str(root)])
    assert str(err.value).startswith("error: ") and "not an empty folder" in str(err.value)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    with pytest.raises(SystemExit, match="error: no experiment number 4"):
        main(["4", str(tmp_path / "new"), "--exps_root", str(root)])
    assert not (tmp_path / "new").exists()


def test_sample_py_takes_a_hub_id_offline(trained_run, tmp_path):
    """The real environment variables, in a fresh process: HF_HOME points at a cache holding the repo."""
    root, sharpener, _ = trained_run
    sharpener.save_pretrained(tmp_path / "hub")
    add_to_hub_cache(tmp_path / "hf_home" / "hub", REPO_ID, tmp_path / "hub")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "sample.py"), "--sharpener_path", REPO_ID, "--prompt", "a red cat", "--steps", "2",
         "--outdir", str(tmp_path / "samples")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (tmp_path / "samples").iterdir()
    assert folder.name.startswith("sd15-dice-someone--dice-tiny-sd15-a1-2steps-cli-")
    options = json.loads((folder / "sampling_options.json").read_text())
    assert options["method"] == "dice" and options["sharpener_experiment"] == REPO_ID
    assert options["sharpener"].startswith(str(tmp_path / "hf_home" / "hub" / "models--someone--dice-tiny-sd15"))
    assert (folder / "00000.png").is_file() and options["resolution"] == 32


def test_every_public_name_has_its_own_docstring():
    for name in dice.__all__:
        doc = getattr(dice, name).__doc__ or ""
        assert len(doc.strip()) > 20 and not doc.startswith(f"{name}("), name
