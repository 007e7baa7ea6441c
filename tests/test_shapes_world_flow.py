"""The flow-matching shapes world: the shipped StableDiffusion3Pipeline folder, its pretraining, that CFG matters on it,
and the DICE demo on it (python -m dice.demo shapes-flow)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dice.shapes_world import model as world_model
from dice.shapes_world import world
from dice.shapes_world.model import FLOW_GUIDANCE_SCALE
from dice.shapes_world.scoring import DEFAULT_EVALUATOR, DEFAULT_FLOW_PIPELINE, DEFAULT_FLOW_SHARPENER, DEFAULT_PIPELINE, load_flow_pipeline

ASSETS = DEFAULT_PIPELINE.parent
# CFG (w=3) leads unguided sampling by at least this much accuracy on the demo's first 64 prompts (measured on the
# shipped model, 20 Euler steps: unguided 0.641, CFG 0.984): a bit over half its lead.
CFG_MARGIN = 0.20


@pytest.fixture(scope="module")
def flow_pipe():
    return load_flow_pipeline()


def test_shipped_flow_model_is_a_stock_sd3_folder_that_samples_offline(flow_pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline
    from transformers import CLIPTextModelWithProjection

    pipe = flow_pipe
    assert type(pipe) is StableDiffusion3Pipeline and isinstance(pipe.transformer, SD3Transformer2DModel)
    assert type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler and pipe.scheduler.config.shift == world_model.FLOW_SHIFT
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert all(type(e) is CLIPTextModelWithProjection for e in (pipe.text_encoder, pipe.text_encoder_2))
    assert pipe.tokenizer.model_max_length == pipe.tokenizer_2.model_max_length == world_model.FLOW_CLIP_TOKENS
    # The epsilon world's VAE and frozen text encoder, weight for weight (the encoder in both CLIP slots).
    eps = StableDiffusionPipeline.from_pretrained(DEFAULT_PIPELINE)
    assert pipe.vae.config.scaling_factor == eps.vae.config.scaling_factor and pipe.vae.config.shift_factor == 0
    for a, b in zip(pipe.vae.state_dict().values(), eps.vae.state_dict().values()):
        assert torch.equal(a, b)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        for (name, a), b in zip(encoder.text_model.state_dict().items(), eps.text_encoder.state_dict().values()):
            assert torch.equal(a, b), name
        assert torch.equal(encoder.text_projection.weight, torch.eye(world_model.TEXT_DIM))
    # A plain stock call: prompt in, 32x32 image out.
    image = pipe("a red circle and a blue square", guidance_scale=5.0, num_inference_steps=4,
                 max_sequence_length=world_model.FLOW_T5_TOKENS, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_flow_training_conditioning_is_what_the_stock_pipeline_feeds(flow_pipe):
    """Each caption's training rows are the pipeline's own encoding, and a dropped caption is exactly the
    pipeline's empty negative prompt: the unconditional model CFG uses is the one that was trained."""
    from diffusers import StableDiffusionPipeline

    from dice.shapes_world.pretrain import FlowCaptionTable

    combos = [world.Combination("red", "circle", "blue", "square"), world.Combination("yellow", "triangle", "purple", "cross")]
    table = FlowCaptionTable(flow_pipe, combos)
    prompts = [combos[1].caption(2), combos[0].caption(0)]  # the longest template fits the 16 CLIP tokens
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = flow_pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=True, max_sequence_length=world_model.FLOW_T5_TOKENS)
    rows = torch.tensor([table.position[p] for p in prompts])
    assert torch.equal(table.embed(rows)[0], embeds) and torch.equal(table.embed(rows)[1], pooled)
    empty = table.embed(torch.zeros(2, dtype=torch.long))
    assert torch.equal(empty[0], negative) and torch.equal(empty[1], negative_pooled)
    assert embeds.shape == (2, world_model.FLOW_CLIP_TOKENS + world_model.FLOW_T5_TOKENS, 2 * world_model.TEXT_DIM)
    assert not embeds[:, world_model.FLOW_CLIP_TOKENS:].any()  # the zero "T5" block
    # The CLIP rows are the epsilon world's encoder's penultimate states: its 77-token rows, cut to 16 (causal attention).
    eps = StableDiffusionPipeline.from_pretrained(DEFAULT_PIPELINE)
    ids = eps.tokenizer(prompts, padding="max_length", max_length=eps.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        states = eps.text_encoder(ids, output_hidden_states=True)
    clip = embeds[:, :world_model.FLOW_CLIP_TOKENS]
    assert torch.equal(clip[..., :world_model.TEXT_DIM], states.hidden_states[-2][:, :world_model.FLOW_CLIP_TOKENS])
    assert torch.equal(clip[..., world_model.TEXT_DIM:], clip[..., :world_model.TEXT_DIM])
    assert torch.equal(pooled[:, :world_model.TEXT_DIM], states.pooler_output)


def test_flow_objective_is_the_schedulers_flow():
    """The training noising is the scheduler's own ``scale_noise``, and the velocity target is what its Euler
    step integrates: one step from sigma to 0 with the true velocity lands on the clean latents."""
    from dice.shapes_world.pretrain import FlowObjective, FlowRecipe

    scheduler = world_model.build_flow_scheduler(1.0)  # given sigmas as they are (it would shift them again)
    objective = FlowObjective(None, FlowRecipe(shift=3.0))
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(5, 4, 16, 16, generator=gen)
    noisy, timesteps, target, weights = objective.noise(clean, torch.Generator().manual_seed(1))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    sigma = timesteps / 1000
    assert weights is None and torch.allclose(target, noise - clean)
    for i in range(len(clean)):
        scheduler.set_timesteps(sigmas=[float(sigma[i])])  # one step from sigma to 0
        expected = scheduler.scale_noise(clean[i:i + 1], scheduler.timesteps[:1], noise[i:i + 1])
        assert torch.allclose(noisy[i:i + 1], expected, atol=1e-6)
        landed = scheduler.step(target[i:i + 1], scheduler.timesteps[0], noisy[i:i + 1]).prev_sample
        assert torch.allclose(landed, clean[i:i + 1], atol=1e-5)
    # Logit-normal then shifted: with shift 3 the median sigma is 3 * 0.5 / (1 + 2 * 0.5) = 0.75.
    many = objective.sigmas(20000, torch.Generator().manual_seed(2))
    assert 0 < many.min() and many.max() < 1 and abs(many.median().item() - 0.75) < 0.01


def test_flow_pretraining_lowers_the_loss_and_resumes_bit_identically(tmp_path):
    from diffusers import AutoencoderKL

    from dice.shapes_world.pretrain import FlowRecipe, encode_posteriors, render_split, train_transformer

    recipe = FlowRecipe(transformer_steps=30, transformer_batch_size=16, transformer_warmup_steps=3,
                        transformer_learning_rate=2e-3, checkpoint_every=15)
    images, combos = render_split("train", 64, seed=0)
    vae = AutoencoderKL.from_pretrained(DEFAULT_PIPELINE / "vae")  # the world's latents: a loss with structure to learn
    means, stds = encode_posteriors(vae, images)
    scaling = vae.config.scaling_factor

    def fresh():
        torch.manual_seed(3)
        tokenizer = world_model.build_tokenizer(tmp_path / "tok")
        return world_model.assemble_flow_pipeline(vae, world_model.build_text_encoder(tokenizer), tokenizer,
                                                  world_model.build_transformer())

    losses = []
    pipe = fresh()
    train_transformer(pipe, means, stds, combos, scaling, recipe, progress=False, on_step=lambda step, loss: losses.append(loss))
    # Measured: the last five losses average 0.44 of the first five.
    assert len(losses) == 30 and sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses

    # Crash after the step-15 checkpoint, then resume: the same weights as the uninterrupted run.
    def crash(step, loss):
        if step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_transformer(fresh(), means, stds, combos, scaling, recipe, tmp_path / "ckpt", progress=False, on_step=crash)
    resumed = fresh()
    assert train_transformer(resumed, means, stds, combos, scaling, recipe, tmp_path / "ckpt", progress=False) == 30
    for (name, a), b in zip(pipe.transformer.state_dict().items(), resumed.transformer.state_dict().values()):
        assert torch.equal(a, b), name


def test_shipped_flow_model_matches_its_checksums_and_recipe():
    from dice.shapes_world.pretrain import FLOW_RECIPE_FILE, FlowRecipe, sha256

    sums = dict(reversed(line.split("  ")) for line in (ASSETS / "SHA256SUMS").read_text().splitlines())
    flow_files = {p.relative_to(ASSETS).as_posix() for p in DEFAULT_FLOW_PIPELINE.rglob("*.safetensors")}
    assert len(flow_files) == 4 and flow_files <= set(sums)  # transformer, VAE, both CLIP slots
    for name in flow_files:
        assert sha256(ASSETS / name) == sums[name], name
    report = json.loads((ASSETS / FLOW_RECIPE_FILE).read_text())
    assert report["recipe"] == {**FlowRecipe().__dict__, **report["recipe"]} and set(report["recipe"]) == set(FlowRecipe().__dict__)
    assert report["transformer_steps_done"] == report["recipe"]["transformer_steps"]  # the recipe's model, not a time-boxed cut
    assert report["max_sequence_length"] == world_model.FLOW_T5_TOKENS
    # The reused parts are the shipped epsilon world's.
    for name, digest in report["reused_sha256"].items():
        assert sha256(ASSETS / name) == digest, name
    assert sum(p.stat().st_size for p in DEFAULT_FLOW_PIPELINE.rglob("*") if p.is_file()) <= 10e6
    # Its shipped sharpener (fp32 as trained, 4.7 MB) too.
    assert sum(p.stat().st_size for p in DEFAULT_FLOW_SHARPENER.rglob("*") if p.is_file()) <= 6e6


def test_cfg_beats_unguided_sampling_on_the_flow_world(flow_pipe):
    """A scientific regression test on the demo's first 64 prompts, the stock pipeline and its Euler sampler,
    20 steps: if the model, the pipeline call or the evaluator breaks, CFG's lead over unguided sampling goes."""
    from dice.shapes_world import evaluator as ev
    from dice.shapes_world.scoring import prompt_combinations, sample_flow, to_uint8

    model = ev.load_evaluator(DEFAULT_EVALUATOR)
    entries = world.evaluation_prompts(64)
    prompts, seeds = [e["prompt"] for e in entries], [e["index"] for e in entries]
    labels = ev.labels_of(prompt_combinations(prompts))
    accuracy = {}
    for name, scale in (("unguided", 1.0), ("cfg", FLOW_GUIDANCE_SCALE)):
        _, predicted = ev.predict(model, to_uint8(sample_flow(flow_pipe, prompts, seeds, scale)))
        accuracy[name] = (predicted == labels).all(dim=1).double().mean().item()
    assert accuracy["cfg"] - accuracy["unguided"] >= CFG_MARGIN, accuracy


def test_flow_demo_runs_end_to_end_on_the_flow_world(tmp_path, capsys, monkeypatch):
    """`python -m dice.demo shapes-flow` at a tiny size (64 training images, 1 update of 2, 4 prompts): it trains
    train_sd3.py with the flow world's demo preset (w=3, 8 zero T5 rows), samples every row with the flow sampler and
    ends with the same key=value lines as the epsilon world's demo. Run as if no sharpener were shipped (the branch
    the epsilon world's demo test does not take; the shipped one is the committed run's, tested below)."""
    import dataclasses

    from dice.demo import cli
    from dice.shapes_world import demo

    monkeypatch.setattr(demo, "TOY_TRAIN_IMAGES", 64)
    # One thread: the pinned two spin against other jobs on a loaded machine (measured: 70 s against 24 s at load 4.5);
    # the thread count changes bits, not the path this tests.
    monkeypatch.setattr(demo, "DEMO_THREADS", 1)
    flow_world = dataclasses.replace(demo.DEMO_WORLDS["shapes-flow"], shipped=tmp_path / "no-shipped-sharpener")
    monkeypatch.setitem(demo.DEMO_WORLDS, "shapes-flow", flow_world)
    cli(["shapes-flow", "--exps_root", str(tmp_path), "--max_train_steps", "1", "--train_batch_size", "2", "--num_prompts", "4"])
    out = capsys.readouterr().out.rstrip().splitlines()
    run_dir = tmp_path / "00000-demo-shapes-flow"
    result = json.loads((run_dir / "demo_result.json").read_text())
    options = json.loads((run_dir / "training_options.json").read_text())
    assert (options["guidance_scale"], options["max_sequence_length"]) == (FLOW_GUIDANCE_SCALE, world_model.FLOW_T5_TOKENS)
    assert options["pretrained_model_name_or_path"] == str(DEFAULT_FLOW_PIPELINE)
    assert (result["world"], result["preset"], result["guidance_scale"]) == ("shapes-flow", demo.DEMO_WORLDS["shapes-flow"].preset, 3.0)
    rows = ["unguided", "cfg", "dice_now"]
    assert list(result["methods"]) == rows
    assert {m: r["nfe"] for m, r in result["methods"].items()} == {m: 40 if m == "cfg" else 20 for m in rows}
    assert result["methods"]["cfg"]["label"] == "CFG w=3" and result["methods"]["dice_now"]["training_samples"] == 2
    for name in rows:
        manifest = Path(result["methods"][name]["folder"]) / "manifest.jsonl"
        assert len(manifest.read_text().splitlines()) == 4
    assert result["shipped_sharpener"] is None and "cfg_gain_recovered" not in result
    keys = [f"accuracy_{m}" for m in rows] + ["cfg_gain_recovered_now", "cfg_gap_closed"]
    assert [line.split("=")[0] for line in out[-len(keys):]] == keys
    assert out[-1] == f"cfg_gap_closed={result['cfg_gap_closed']:.3f}"
    assert any(line.startswith("Shapes world (shapes-flow), 4 held-out prompts") and "flow-matching Euler" in line for line in out)


def test_the_docs_show_the_committed_flow_demo_result():
    """docs/shapes_world.md's flow demo table is the committed demo_result_flow.json as the demo prints it, from a run
    of the demo as shipped (its preset, 256 prompts, the shipped sharpener, pinned CPU kernels)."""
    from dice.presets import preset
    from dice.shapes_world.demo import DEMO_WORLDS, PINNED_KERNELS, render_report_block

    repo = DEFAULT_FLOW_PIPELINE.parents[3]
    result = json.loads((repo / "docs" / "shapes_world" / "demo_result_flow.json").read_text())
    text = (repo / "docs" / "shapes_world.md").read_text()
    assert render_report_block(text, result) == text, "run python -m dice.shapes_world.demo docs/shapes_world/demo_result_flow.json"
    flow_world = DEMO_WORLDS["shapes-flow"]
    settings = preset(flow_world.family, flow_world.preset)
    assert (result["world"], result["preset"], result["seed"], result["num_prompts"]) == ("shapes-flow", flow_world.preset, 0, 256)
    assert (result["train_steps"], result["train_batch_size"]) == (settings["max_train_steps"], settings["train_batch_size"])
    assert result["cpu_kernels"] == {"pinned": True, **PINNED_KERNELS, "aten_capability": "AVX2", "threads": 2}
    shipped = json.loads((DEFAULT_FLOW_SHARPENER / "recipe.json").read_text())
    assert result["methods"]["dice"]["training_samples"] == shipped["training_samples"]  # the sharpener shipped now


def test_the_flow_worlds_scaling_s_is_the_one_validation_chose():
    """`launch.sh table1 toy-flow`'s Scaling row: the s and the rule (tokens and SD3's pooled vector, what the library
    scales on SD3 by default) that scored best on the validation prompts, as benchmarks/flow_scaling.py recorded."""
    from dice.presets import EMBEDDING_SCALES

    results = json.loads((DEFAULT_FLOW_PIPELINE.parents[3] / "benchmarks" / "results" / "flow_scaling-validation.json").read_text())
    measured = {(rule, float(s)): point["accuracy"] for rule, points in results["rules"].items() for s, point in points.items()}
    assert len(measured) >= 10 and max(measured, key=measured.get) == (results["chosen"]["rule"], results["chosen"]["s"])
    assert results["chosen"] == {"rule": "tokens and pooled vector", "s": EMBEDDING_SCALES["shapes-world-flow"],
                                 "by": "the highest validation accuracy"}


def test_the_shipped_flow_sharpeners_model_card_loads_the_world_without_t5():
    """The card's snippet is what a user pastes: the flow world lists T5 as absent, and the stock loader refuses that
    folder unless text_encoder_3 / tokenizer_3 are passed as None (the epsilon world's card passes nothing of the kind)."""
    from dice.checkpoint import load_sharpener
    from dice.hub import model_card
    from dice.shapes_world.scoring import DEFAULT_SHARPENER

    sharpener, config = load_sharpener(str(DEFAULT_FLOW_SHARPENER))
    flow_card = str(model_card(config, has_grid=True, num_parameters=sum(p.numel() for p in sharpener.parameters())))
    assert 'from_pretrained(model_location("shapes-world-flow")' in flow_card
    assert "text_encoder_3=None, tokenizer_3=None" in flow_card
    assert flow_card == (DEFAULT_FLOW_SHARPENER / "README.md").read_text()  # the shipped card is the current one
    assert "text_encoder_3" not in str(model_card(load_sharpener(str(DEFAULT_SHARPENER))[1]))
