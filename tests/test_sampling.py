"""sample.py and the library sampling routine on tiny pipelines."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
import torch

from dice.adapters import adapter_class
from dice.checkpoint import SharpenerConfig, load_sharpener, save_sharpener
from dice.sampling import generate, use_scheduler
from dice import Sharpener

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exps(tiny_model, tmp_path_factory):
    """exps/00000-trained/checkpoint-5 with a random (not zero) sharpener for the tiny SD1.5."""
    root = tmp_path_factory.mktemp("exps")
    torch.manual_seed(1)
    cfg = SharpenerConfig(family="sd15", base_model=str(tiny_model("sd15")), dim=32, step=5,
                          training_options={"resolution": 32})
    save_sharpener(root / "00000-trained" / "checkpoint-5", Sharpener(32), cfg)
    return root


def _sample(args, processes=1):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if processes == 1:
        cmd = [sys.executable, str(REPO / "sample.py")]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", free_port(), str(REPO / "sample.py")]
    proc = subprocess.run(cmd + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _folder(outdir):
    (folder,) = [p for p in Path(outdir).iterdir() if p.is_dir()]
    return folder


def test_dice_with_alpha_zero_equals_unguided(tiny_model, exps):
    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    use_scheduler(adapter)
    sharpener, _ = load_sharpener("0", exps)
    kw = dict(steps=3, resolution=32, output_type="latent")
    plain = generate(adapter, ["a red cat", "a dog"], [0, 1], **kw)
    zero = generate(adapter, ["a red cat", "a dog"], [0, 1], sharpener=sharpener, alpha=0.0, **kw)
    dice = generate(adapter, ["a red cat", "a dog"], [0, 1], sharpener=sharpener, **kw)
    cfg = generate(adapter, ["a red cat", "a dog"], [0, 1], cfg_scale=5.0, **kw)
    both = generate(adapter, ["a red cat", "a dog"], [0, 1], sharpener=sharpener, cfg_scale=5.0, **kw)
    assert torch.equal(plain, zero)
    assert not torch.allclose(plain, dice) and not torch.allclose(plain, cfg) and not torch.allclose(both, cfg)


@pytest.mark.slow  # three sample.py processes, one of them two-process (the fast tier: in-process sampling)
def test_image_depends_only_on_seed_and_index(tiny_model, exps, tmp_path):
    # No --resolution: the sharpener's training resolution (32) is the default.
    common = ["--sharpener_path", "0", "--exps_root", str(exps), "--steps", "3", "--prompts", str(tmp_path / "p.txt")]
    (tmp_path / "p.txt").write_text("\n".join(["a red cat", "a blue dog", "a tree", "a house", "a car"]) + "\n")
    _sample(common + ["--batch_gpu", "1", "--outdir", str(tmp_path / "b1")])
    _sample(common + ["--batch_gpu", "7", "--outdir", str(tmp_path / "b7")])
    _sample(common + ["--batch_gpu", "2", "--outdir", str(tmp_path / "p2")], processes=2)
    folders = [_folder(tmp_path / d) for d in ("b1", "b7", "p2")]
    assert len({f.name for f in folders}) == 1  # one naming rule: same configuration, same name
    for i in range(5):
        data = {(f / f"{i:05d}.png").read_bytes() for f in folders}
        assert len(data) == 1, f"image {i} differs between batch sizes / process counts"
    manifest = [json.loads(x) for x in (folders[2] / "manifest.jsonl").read_text().splitlines()]
    assert [m["index"] for m in manifest] == [0, 1, 2, 3, 4] and manifest[1]["prompt"] == "a blue dog"
    assert manifest[3]["file"] == "00003.png" and manifest[3]["seed"] == 3
    options = json.loads((folders[0] / "sampling_options.json").read_text())
    assert options["method"] == "dice" and options["nfe"] == 3 and options["num_images"] == 5
    assert options["resolution"] == 32
    assert options["base_model"] == str(tiny_model("sd15"))  # taken from the sharpener's checkpoint
    assert options["sharpener_experiment"] == "00000-trained"


def test_alpha_zero_samples_the_base_model_as_a_baseline(tiny_model, exps, tmp_path):
    from dice.sample_cli import build_parser, resolve

    plan = resolve(build_parser().parse_args(["--sharpener_path", "0", "--exps_root", str(exps), "--alpha", "0"]))
    assert plan["sharpener"] is None and plan["model"] == str(tiny_model("sd15")) and plan["family"] == "sd15"


@pytest.mark.slow  # two sample.py processes; the rehearsal resumes sample folders too
def test_resume_generates_only_missing_images(tiny_model, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"index": i, "caption": f"a photo of a cat {i}"}) + "\n" for i in range(4)))
    args = ["--pretrained_model_name_or_path", str(tiny_model("sd15")), "--cfg_scale", "5", "--steps", "2",
            "--resolution", "32", "--prompts", str(prompts), "--outdir", str(tmp_path / "out")]
    _sample(args)
    folder = _folder(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    (folder / "00002.png").unlink()
    (folder / ".00003.png.tmp").write_bytes(b"half-written")  # what a killed run leaves: never counted
    proc = _sample(args)
    assert "(1 new on this process)" in proc.stderr + proc.stdout
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == before
    assert len((folder / "manifest.jsonl").read_text().splitlines()) == 4
    assert json.loads((folder / "sampling_options.json").read_text())["method"] == "cfg"


def test_sharpener_of_another_family_or_width_is_refused(exps):
    with pytest.raises(ValueError, match="trained for sd15"):
        load_sharpener("0", exps, family="sdxl")
    with pytest.raises(ValueError, match="32-wide"):
        load_sharpener("0", exps, family="sd15", dim=768)


def test_unknown_experiment_number(exps):
    from dice.experiments import ExperimentNotFound

    with pytest.raises(ExperimentNotFound, match="no experiment number 7"):
        load_sharpener("7", exps)
    proc = subprocess.run([sys.executable, str(REPO / "sample.py"), "--sharpener_path", "7", "--exps_root", str(exps),
                           "--prompt", "x"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode != 0 and "no experiment number 7" in proc.stderr


def dice_log(caplog, monkeypatch):
    """Capture the "dice" logger's INFO lines (an in-process training run may have detached it from root)."""
    import logging

    monkeypatch.setattr(logging.getLogger("dice"), "propagate", True)
    caplog.set_level(logging.INFO, logger="dice")
    return caplog


def test_negative_prompt_defaults_to_what_the_sharpener_was_trained_with(tiny_model, tmp_path, caplog, monkeypatch):
    """Trained with u always a negative prompt (paper 3.2): sample.py draws u per image from that list,
    never the empty prompt it never saw; overriding it is allowed with a warning."""
    from dice.negatives import NegativePrompts
    from dice.sample_cli import main as sample_main
    from dice.sampling import image_seed

    caplog = dice_log(caplog, monkeypatch)
    torch.manual_seed(2)
    negatives = ["blurry", "ugly", "bad anatomy"]
    config = SharpenerConfig(family="sd15", base_model=str(tiny_model("sd15")), dim=32, step=1, negative_prompts=negatives,
                             negative_prompt_prob=1.0, training_options={"resolution": 32})
    save_sharpener(tmp_path / "ckpt" / "checkpoint-1", Sharpener(32), config)
    (tmp_path / "p.txt").write_text("a red cat\na blue dog\na tree\na house\n")
    common = ["--sharpener_path", str(tmp_path / "ckpt"), "--prompts", str(tmp_path / "p.txt"), "--steps", "1"]
    folder = sample_main(common + ["--outdir", str(tmp_path / "default")])
    drawn = [json.loads(line)["negative_prompt"] for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert drawn == [NegativePrompts(negatives, 1.0).for_image(image_seed(0, i)) for i in range(4)]
    assert set(drawn) <= set(negatives) and len(set(drawn)) > 1  # per image, from the trained list
    options = json.loads((folder / "sampling_options.json").read_text())
    assert options["negative_prompt"] == {"drawn_from": negatives, "probability": 1.0}
    assert "as the sharpener was trained" in caplog.text and "warning" not in caplog.text

    folder = sample_main(common + ["--outdir", str(tmp_path / "empty"), "--negative_prompt", ""])
    assert "--negative_prompt '' overrides u the sharpener was trained with" in caplog.text
    assert {json.loads(line)["negative_prompt"] for line in (folder / "manifest.jsonl").read_text().splitlines()} == {""}
    # Without a sharpener (alpha 0: the base model's baselines) the default is the empty prompt, as in Table 1.
    folder = sample_main(common + ["--outdir", str(tmp_path / "base"), "--alpha", "0", "--cfg_scale", "5"])
    assert json.loads((folder / "sampling_options.json").read_text())["negative_prompt"] == ""


def test_base_model_found_from_another_directory_and_cross_model_recorded(tiny_model, tiny_dataset, tmp_path,
                                                                          caplog, monkeypatch):
    import shutil

    from dice.sample_cli import main as sample_main
    from dice.testkit.tiny import save_tiny_pipeline
    from dice.training import main as train_main

    (tmp_path / "a").mkdir()
    shutil.copytree(tiny_model("sd15"), tmp_path / "a" / "tiny")
    monkeypatch.chdir(tmp_path / "a")  # train with a path relative to this directory
    run = train_main("sd15", ["--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(tiny_dataset),
                              "--preset", "demo", "--train_batch_size", "1", "--max_train_steps", "1",
                              "--validation_prompts", "--dataloader_num_workers", "0", "--output_dir", "exps"])
    config = json.loads((tmp_path / "a" / run / "checkpoint-1" / "sharpener.json").read_text())
    assert config["base_model"] == str(tmp_path / "a" / "tiny") and config["base_model_revision"] is None

    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    caplog = dice_log(caplog, monkeypatch)
    common = ["--sharpener_path", str(tmp_path / "a" / run), "--prompt", "a cat", "--steps", "1"]
    options = json.loads((sample_main(common + ["--outdir", "own"]) / "sampling_options.json").read_text())
    assert options["base_model"] == options["sharpener_base_model"] == str(tmp_path / "a" / "tiny")
    assert "cross-model" not in caplog.text

    other = save_tiny_pipeline(tmp_path / "other", "sd15", seed=1)  # another SD1.5 model (paper Fig. 6)
    folder = sample_main(common + ["--outdir", "cross", "--pretrained_model_name_or_path", str(other)])
    options = json.loads((folder / "sampling_options.json").read_text())
    assert (options["base_model"], options["sharpener_base_model"]) == (str(other), str(tmp_path / "a" / "tiny"))
    cross_lines = [r.getMessage() for r in caplog.records if "cross-model" in r.getMessage()]
    assert cross_lines == [f"cross-model: the sharpener was trained on {tmp_path / 'a' / 'tiny'} and is applied to {other}"]


def test_a_short_model_name_is_the_model_it_stands_for(tmp_path, caplog, monkeypatch):
    """The shipped sharpener records its base model as "shapes-world": on that model, by either name or by its
    path, sampling, dice.apply and the results table all see the same model, not a cross-model transfer."""
    import logging

    import dice
    from diffusers import StableDiffusionPipeline

    from dice.presets import SHAPES_WORLD, same_base_model
    from dice.sample_cli import main as sample_main
    from dice.shapes_world.scoring import DEFAULT_SHARPENER
    from evaluation.table import is_cross_model

    assert json.loads((DEFAULT_SHARPENER / "config.json").read_text())["base_model"] == "shapes-world"
    assert same_base_model("shapes-world", SHAPES_WORLD) and same_base_model(SHAPES_WORLD + "/", "shapes-world")
    monkeypatch.chdir(Path(SHAPES_WORLD).parent)
    assert same_base_model("shapes-world", "./shapes-world")  # a relative spelling of the same folder
    assert same_base_model("Lykon/DreamShaper", "lykon/dreamshaper") and not same_base_model("shapes-world", "Lykon/DreamShaper")
    assert not same_base_model(None, SHAPES_WORLD)

    caplog = dice_log(caplog, monkeypatch)
    common = ["--sharpener_path", str(DEFAULT_SHARPENER), "--prompt", "a red circle next to a blue square", "--steps", "1"]
    for outdir, model in (("implied", []), ("short", ["--model_name", "shapes-world"]),
                          ("path", ["--pretrained_model_name_or_path", SHAPES_WORLD])):
        options = json.loads((sample_main(common + ["--outdir", str(tmp_path / outdir)] + model) / "sampling_options.json").read_text())
        assert options["base_model"] == SHAPES_WORLD and not is_cross_model(options), options
    assert "cross-model" not in caplog.text
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_WORLD)
    with caplog.at_level(logging.INFO, logger="dice"):
        dice.apply(pipe, str(DEFAULT_SHARPENER))
    assert "cross-model" not in caplog.text
    assert is_cross_model({"base_model": "Lykon/DreamShaper", "sharpener_base_model": "shapes-world"})
