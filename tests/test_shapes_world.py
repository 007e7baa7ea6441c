"""The shapes world: the generator, the shipped model and evaluator, and that CFG and DICE work on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dice.shapes_world import world
from dice.shapes_world.scoring import DEFAULT_EVALUATOR, DEFAULT_PIPELINE, DEFAULT_SHARPENER
from dice.methods.dice import sharpen
from dice.distillation import cfg_teacher

ASSETS = DEFAULT_PIPELINE.parent
# The shipped sharpener gains at least this much accuracy over unguided sampling on the first 64 demo prompts
# (measured with the shipped 2,250-update sharpener: unguided 0.688, DICE 0.984, CFG w=5 0.984): about half its lead.
DICE_MARGIN = 0.15


def test_world_is_deterministic_and_renders_identically():
    a, b = world.scenes("train", 40, seed=5), world.scenes("train", 40, seed=5)
    assert a == b and a != world.scenes("train", 40, seed=6)
    assert [world.render(s).tobytes() for s in a[:5]] == [world.render(s).tobytes() for s in b[:5]]
    image = world.render(a[0])
    assert image.size == (32, 32) and image.mode == "RGB"


def test_unseen_combinations_never_reach_training_but_every_attribute_does():
    unseen = world.unseen_combinations()
    assert len(unseen) == round(0.1 * len(world.all_combinations())) == 58
    assert unseen == world.unseen_combinations()  # a fixed draw
    train = world.scenes("train", 3000)
    assert not any(s.combination in unseen for s in train)
    seen = world.seen_combinations()
    for position, attribute in enumerate(world.ATTRIBUTES):  # each value appears in each slot during training
        assert {c.attributes()[position] for c in seen} == set(world.ATTRIBUTE_VALUES[attribute])
    validation = world.scenes("validation", 3000)
    assert any(s.combination in unseen for s in validation)  # references cover the whole world


def test_captions_parse_back_and_evaluation_prompts_are_half_unseen():
    for combo in world.all_combinations()[::37]:
        for template in range(len(world.TEMPLATES)):
            assert world.parse_caption(combo.caption(template)) == combo
    assert world.parse_caption("A red circle and a blue cross.") == world.Combination("red", "circle", "blue", "cross")
    assert world.parse_caption("a photo of a cat") is None
    assert world.parse_caption("a pink circle and a blue cross") is None
    entries = world.evaluation_prompts(64)
    unseen = world.unseen_combinations()
    assert [e["split"] == "unseen" for e in entries].count(True) == 32
    assert all((world.parse_caption(e["prompt"]) in unseen) == (e["split"] == "unseen") for e in entries)


def test_imagefolder_is_what_the_trainers_read(tmp_path):
    from dice.data import load_records

    folder = world.write_imagefolder(tmp_path / "w", 12, "train")
    layout, records = load_records(folder)
    assert layout == "imagefolder" and len(records) == 12
    assert all(len(r.captions) == 3 and world.parse_caption(r.captions[0]) for r in records)


def test_world_tokenizer_makes_each_word_one_token(tmp_path):
    from dice.shapes_world.model import build_tokenizer

    for tokenizer in (build_tokenizer(tmp_path), _shipped_pipeline().tokenizer):
        for word in world.WORDS:
            assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def _shipped_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(DEFAULT_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_weights_match_their_checksums_and_recipe():
    from dice.shapes_world.pretrain import sha256

    lines = (ASSETS / "SHA256SUMS").read_text().splitlines()
    files = {line.split("  ")[1]: line.split("  ")[0] for line in lines}
    assert set(files) == {p.relative_to(ASSETS).as_posix() for p in ASSETS.rglob("*.safetensors")}
    assert len(files) >= 4  # unet, vae, text encoder, evaluator
    for name, digest in files.items():
        assert sha256(ASSETS / name) == digest, name
    recipe = json.loads((ASSETS / "recipe.json").read_text())
    assert recipe["unet_steps_done"] == recipe["recipe"]["unet_steps"]  # the model is the recipe's, not a time-boxed cut
    # The model (4.5 MB, fp16) and the converged sharpener (4.5 MB, fp32 as trained) stay small enough for git
    # (the flow-matching model and its sharpener beside them have their own bound, tests/test_shapes_world_flow.py).
    flow = (ASSETS / "shapes-world-flow", ASSETS / "sharpener-flow")
    assert sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file() and not set(flow) & set(p.parents)) < 12e6


@pytest.mark.parametrize("world", ["eps", "flow"])
def test_shipped_sharpener_is_its_recipe(world):
    from dice.checkpoint import load_sharpener
    from dice.presets import preset
    from dice.shapes_world.shipped_sharpener import SHIPPED, SHIPPED_PRESET

    shipped = SHIPPED[world]
    recipe = json.loads((shipped.folder / "recipe.json").read_text())
    assert recipe["preset"] == SHIPPED_PRESET and recipe["recipe"] == preset(shipped.family, SHIPPED_PRESET)
    assert recipe["command"] == shipped.command
    sharpener, config = load_sharpener(shipped.folder, family=shipped.family)
    assert config.step == recipe["updates"] == recipe["recipe"]["max_train_steps"]  # the whole recipe, not a cut
    assert config.base_model == shipped.model_name
    trained = config.training_options
    # Trained with the preset's values (the schedule is constant: the run's own length does not change them).
    family_options = ("max_sequence_length", "flow_sigmas", "pooled_embedding") if world == "flow" else ()
    for key in ("learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_weight_decay", "guidance_scale", "loss_type",
                "loss_reduction", "shared_timestep", "resolution", "ema_decay", "gradient_accumulation_steps", *family_options):
        assert trained[key] == recipe["recipe"][key], key
    assert trained["global_batch_size"] == recipe["recipe"]["train_batch_size"] and trained["seed"] == 0
    assert recipe["training_samples"] == config.step * trained["global_batch_size"]


def test_shipped_evaluator_reads_fresh_world_images():
    from dice.shapes_world import evaluator as ev
    from dice.shapes_world.scoring import to_uint8

    model = ev.load_evaluator(DEFAULT_EVALUATOR)
    fresh = world.scenes("test", 1000, seed=11)  # a split and seed the evaluator never trained on
    _, predicted = ev.predict(model, to_uint8([world.render(s) for s in fresh]))
    accuracy = (predicted == ev.labels_of([s.combination for s in fresh])).all(dim=1).double().mean().item()
    assert accuracy >= 0.99


def test_cfg_and_the_shipped_sharpener_beat_unguided_sampling():
    """A scientific regression test on the demo's first 64 prompts: if sampling, the pipeline, the evaluator or
    the shipped sharpener breaks, the lead of CFG (w=5) and of DICE over unguided sampling goes."""
    from dice.adapters import adapter_class
    from dice.checkpoint import load_sharpener
    from dice.sampling import generate, use_scheduler
    from dice.shapes_world import evaluator as ev
    from dice.shapes_world.scoring import prompt_combinations, to_uint8

    adapter = adapter_class("sd15").from_pretrained(str(DEFAULT_PIPELINE))
    use_scheduler(adapter, "dpmsolver++")
    model = ev.load_evaluator(DEFAULT_EVALUATOR)
    entries = world.evaluation_prompts(64)
    prompts, seeds = [e["prompt"] for e in entries], [e["index"] for e in entries]
    labels = ev.labels_of(prompt_combinations(prompts))
    sharpener = load_sharpener(DEFAULT_SHARPENER, family="sd15")[0]
    accuracy = {}
    for name, options in (("unguided", {}), ("cfg", {"cfg_scale": 5.0}), ("dice", {"sharpener": sharpener})):
        images = generate(adapter, prompts, seeds, steps=20, resolution=32, **options)
        _, predicted = ev.predict(model, to_uint8(images))
        accuracy[name] = (predicted == labels).all(dim=1).double().mean().item()
    assert accuracy["cfg"] - accuracy["unguided"] >= 0.10, accuracy
    assert accuracy["dice"] - accuracy["unguided"] >= DICE_MARGIN, accuracy


def test_pretraining_recipe_lowers_the_loss_and_resumes_bit_identically(tmp_path):
    from diffusers import DDPMScheduler

    from dice.shapes_world import model as world_model
    from dice.shapes_world.pretrain import Recipe, encode_posteriors, render_split, train_unet

    recipe = Recipe(unet_steps=30, unet_batch_size=16, unet_warmup_steps=3, unet_learning_rate=2e-3, checkpoint_every=15)
    images, combos = render_split("train", 64, seed=0)
    torch.manual_seed(0)
    vae = world_model.build_vae().eval()
    means, stds = encode_posteriors(vae, images)

    def fresh():
        torch.manual_seed(3)
        tokenizer = world_model.build_tokenizer(tmp_path / "tok")
        return world_model.build_unet(), world_model.build_text_encoder(tokenizer), tokenizer

    schedule = DDPMScheduler.from_config(world_model.build_scheduler().config)
    losses = []
    unet, text_encoder, tokenizer = fresh()
    train_unet(unet, text_encoder, tokenizer, schedule, means, stds, combos, 1.0, recipe, progress=False,
               on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 30 and sum(losses[-5:]) < 0.8 * sum(losses[:5])

    # Crash after the step-15 checkpoint, then resume: the same weights as the uninterrupted run.
    unet_a, text_a, tok_a = fresh()

    def crash(step, loss):
        if step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_unet(unet_a, text_a, tok_a, schedule, means, stds, combos, 1.0, recipe, tmp_path / "ckpt", progress=False, on_step=crash)
    unet_b, text_b, tok_b = fresh()
    done = train_unet(unet_b, text_b, tok_b, schedule, means, stds, combos, 1.0, recipe, tmp_path / "ckpt", progress=False)
    assert done == 30
    for (name, a), b in zip(unet.state_dict().items(), unet_b.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_short_sharpener_run_on_the_world_lowers_the_distillation_loss(tmp_path):
    from dice.adapters import adapter_class
    from dice.checkpoint import load_sharpener
    from dice.data import load_records, make_loader
    from dice.distillation import distillation_loss
    from dice.training import main as train_main

    data = world.write_imagefolder(tmp_path / "data", 64, "train")
    run_dir = train_main("sd15", [
        "--pretrained_model_name_or_path", str(DEFAULT_PIPELINE), "--train_data_dir", str(data), "--preset", "toy",
        "--output_dir", str(tmp_path / "exps"), "--max_train_steps", "40", "--checkpointing_steps", "40",
        "--train_batch_size", "16", "--dataloader_num_workers", "0", "--validation_prompts"])
    sharpener, _ = load_sharpener(run_dir, family="sd15")
    adapter = adapter_class("sd15").from_pretrained(str(DEFAULT_PIPELINE))
    prompts = [e["prompt"] for e in world.evaluation_prompts(16)]  # held-out prompts, half unseen
    _, records = load_records(data)
    latents = adapter.encode_images(next(iter(make_loader(records, 32, 16, 0, 1, seed=123)))["pixels"])
    cond, uncond = adapter.encode_prompts(prompts), adapter.encode_negative([""] * 16)
    gen = torch.Generator().manual_seed(0)
    totals = {"unguided student": 0.0, "DICE student": 0.0}
    with torch.no_grad():
        for _ in range(4):
            t = torch.randint(0, adapter.num_train_timesteps, (16,), generator=gen)
            x_t = adapter.add_noise(latents, torch.randn(latents.shape, generator=gen), t)
            teacher = cfg_teacher(adapter, x_t, t, cond, uncond, 5.0)
            totals["unguided student"] += distillation_loss(adapter.predict_noise(x_t, t, cond), teacher).item()
            sharpened = adapter.predict_noise(x_t, t, sharpen(adapter, sharpener, cond, uncond))
            totals["DICE student"] += distillation_loss(sharpened, teacher).item()
    # Measured: 0.95 after these 40 updates (0.91 after 200, 0.82 after 1,200); an untrained sharpener scores 1.02.
    assert totals["DICE student"] < 0.98 * totals["unguided student"], totals


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_cli", Path(__file__).resolve().parents[1] / "evaluation" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_world_evaluator_scores_a_sample_folder_and_refuses_other_prompts(tmp_path, capsys):
    from dice.sample_cli import main as sample_main

    prompts = tmp_path / "prompts.jsonl"
    world.write_prompt_file(prompts, 8)
    folder = sample_main(["--model_name", "shapes-world", "--prompts", str(prompts), "--outdir", str(tmp_path / "samples"),
                          "--steps", "4", "--cfg_scale", "5"])
    results = tmp_path / "results.jsonl"
    cli = _load_script("shapes_world")
    accuracy, fd = cli.main(["calc", "--images", str(folder), "--results", str(results)])
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["metric"] for line in lines] == ["world_accuracy", "world_fd"]
    assert lines[0]["count"] == 8 and 0 <= lines[0]["value"] <= 1
    assert lines[0]["options"]["num_seen"] == lines[0]["options"]["num_unseen"] == 4
    assert lines[0]["sampling_options"]["method"] == "cfg" and lines[1]["value"] > 0
    assert "world prompt accuracy" in capsys.readouterr().out

    other = sample_main(["--model_name", "shapes-world", "--prompt", "a photo of a cat", "--outdir", str(tmp_path / "samples"),
                         "--steps", "2"])
    from dice.shapes_world.scoring import NotAWorldPrompt

    with pytest.raises(NotAWorldPrompt, match="not shapes-world captions"):
        cli.main(["calc", "--images", str(other), "--results", str(results)])
    assert len(results.read_text().splitlines()) == 2  # nothing appended for the refused folder


def test_toy_demo_runs_end_to_end(tmp_path, capsys):
    from dice.demo import cli

    cli(["--exps_root", str(tmp_path), "--max_train_steps", "3", "--train_batch_size", "4", "--num_prompts", "8",
         "--grid_out", str(tmp_path / "docs" / "grid.png")])
    out = capsys.readouterr().out.rstrip().splitlines()
    run_dir = tmp_path / "00000-demo-toy"
    result = json.loads((run_dir / "demo_result.json").read_text())
    assert result["train_steps"] == 3 and result["train_batch_size"] == 4 and result["num_prompts"] == 8
    assert (tmp_path / "docs" / "grid.png").read_bytes() == (run_dir / "demo_grid.png").read_bytes()
    assert {m: r["nfe"] for m, r in result["methods"].items()} == {"unguided": 20, "cfg": 40, "dice": 20, "dice_now": 20}
    for name in result["methods"]:
        assert (Path(result["methods"][name]["folder"]) / "manifest.jsonl").is_file()
    assert result["methods"]["dice_now"]["training_samples"] == 3 * 4
    assert result["methods"]["dice"]["training_samples"] > 100_000  # the shipped, converged sharpener
    rows = [line.split(" | ")[:2] for line in out if line.startswith("| ")]
    assert [row for row in rows if row[0].startswith("| DICE")] == [
        [f"| DICE (shipped, {result['methods']['dice']['training_samples']:,} samples)", "20"], ["| DICE (trained now, 12 samples)", "20"]]
    assert [line.split("=")[0] for line in out[-7:]] == [
        "accuracy_unguided", "accuracy_cfg", "accuracy_dice", "accuracy_dice_now", "cfg_gain_recovered",
        "cfg_gain_recovered_now", "cfg_gap_closed"]
    assert out[-5] == f"accuracy_dice={result['methods']['dice']['accuracy']:.3f}"
    assert out[-1] == f"cfg_gap_closed={result['cfg_gap_closed']:.3f}"
    from PIL import Image

    with Image.open(run_dir / "demo_grid.png") as grid:
        assert grid.width > 8 * 128 and grid.height > 4 * 128  # 8 prompts x 4 rows, enlarged 4x
    metrics = [json.loads(line)["metric"] for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert metrics == ["world_accuracy", "world_fd"] * 4
