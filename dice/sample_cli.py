"""Command line of sample.py: options -> adapter + trained method -> dice.sampling.sample_prompts.

Options, the trained model's files and the prompt list are all checked before the base model is
loaded, and nothing is written before those checks pass.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from .adapters import adapter_class
from .adapters.base import absolute_if_local
from .adapters.registry import detect_family, families
from .checkpoint import check_sharpener_fits, load_sharpener, read_config, resolve_sharpener_files, resolve_trained_config
from .errors import (
    ArgumentParser,
    UserError,
    check_output_dir,
    finite_float,
    guidance_scale,
    non_negative_int,
    positive_float,
    positive_int,
)
from .experiments import DEFAULT_ROOT
from .hub import HUB_WEIGHTS_NAME, is_repo_id
from .methods import method_class
from .methods.base import TrainedModel, count_parameters
from .methods.dice import DiceMethod
from .negatives import NegativePrompts
from .paper import GUIDANCE_SCALE
from .presets import MODEL_FAMILY_OPTIONS, MODELS, model_location, same_base_model
from .prompts import load_prompts
from .runtime import needs_cpu_process_group, process_state
from .sampling import (
    OPTIONS_FILE,
    SCHEDULERS,
    image_seed,
    method_name,
    prepare_folder,
    sample_prompts,
    scheduler_choice,
    use_scheduler,
    write_manifest,
)

logger = logging.getLogger("dice")
VAE_OPTION = "pretrained_vae_model_name_or_path"
TRANSFORMER_OPTION = "pretrained_transformer_model_name_or_path"
# Replacement components: family options of one family (SDXL's VAE, PixArt-Sigma 512's transformer).
COMPONENT_OPTIONS = {VAE_OPTION: "SDXL", TRANSFORMER_OPTION: "PixArt-Sigma"}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="sample.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--sharpener_path", default=None, help="DICE: experiment id (3), run folder, checkpoint-<step> folder, sharpener.safetensors, "
      "a folder written by python -m dice.export, or a Hub repo id (owner/name)")
    a("--sharpener_revision", default=None, help="branch, tag or commit of a Hub sharpener")
    a("--sharpener_id", default=None, help="same as --sharpener_path with an experiment id (the authors' flag)")
    a("--model_path", default=None, help="any trained method (DICE, GD, PnP): experiment id, run folder or checkpoint-<step> "
      "folder (the authors' flag); the method is read from the checkpoint")
    a("--exps_root", default=DEFAULT_ROOT, help="where experiment ids are looked up")
    a("--pretrained_model_name_or_path", default=None, help="base model (default: the one the sharpener was trained on)")
    a("--model_name", default=None, help=f"base model by short name ({', '.join(MODELS)}) or id/path; same as --pretrained_model_name_or_path. "
      "With a sharpener, a family name (sd15, sdxl, pixart) only names the family, as in the authors' sample.py: the base "
      "model is the sharpener's, and the folder also gets the authors' name <model_name>_<sharpener_id>_steps<N>_alpha<a>")
    a("--family", default=None, choices=families(), help="model family when it cannot be detected (default: detected)")
    a("--revision", default=None)
    a("--variant", default=None)
    a("--single_file_config", default=None, help="diffusers folder or hub id with the config of a single-file model")
    a("--pretrained_vae_model_name_or_path", default=None, help="SDXL: replacement VAE (default: the one the sharpener was trained with)")
    a("--pretrained_transformer_model_name_or_path", default=None, help="PixArt-Sigma: replacement transformer, e.g. the 512 "
      "checkpoint's (default: the one the sharpener was trained with; --model_name pixart-sigma-512 names it)")
    a("--alpha", type=finite_float, default=1.0, help="DICE strength (1 = as trained)")
    a("--cfg_scale", type=guidance_scale, default=1.0, help="CFG scale; 1 = unguided (one network evaluation per step)")
    a("--gd_scale", type=guidance_scale, default=None, help=f"GD / PnP: the guidance scale ω the trained model imitates "
      f"(default {GUIDANCE_SCALE:g}; no CFG, one denoiser evaluation per step, PnP's guide besides)")
    a("--embedding_scale", type=positive_float, default=1.0, help="Scaling (training-free baseline): multiply the prompt "
      "embedding by s (every token but CLIP's first, which is the same for every prompt; SDXL's pooled vector unchanged). "
      "Paper: SD1.5 1.2, DreamShaper 1.3, SDXL 1.5, PixArt-α 1.2")
    a("--steps", type=positive_int, default=20, help="sampling steps")
    a("--scheduler", default=None, help=f"one of {sorted(SCHEDULERS)} or a diffusers scheduler class name (default: the family's: "
      "dpmsolver++, the paper's DPM-Solver++ 2M, for SD1.5 / SDXL / PixArt; flow_euler, the model's own flow-matching "
      "Euler sampler at its shift, for SD3; recorded in sampling_options.json)")
    a("--negative_prompt", default=None, help="negative prompt: the CFG negative and DICE's sharpener context u. Default: "
      "u as the sharpener was trained (the empty prompt, or per image one of the negative prompts it was trained with); "
      "the empty prompt without a sharpener")
    a("--prompt", action="append", default=None, help="a prompt (repeatable); overrides --prompts")
    a("--prompts", default="coco5k", help="coco5k (the paper's 5,000 MS-COCO val2017 captions), hps-anime, hps-concept-art, "
      "hps-paintings, hps-photo, drawbench (Table 1's HPS v2.1 / DrawBench sets, fetched once: see README), or a "
      ".txt, .jsonl, .json or .csv file")
    a("--num_images", type=positive_int, default=None, help="only the first N prompts")
    a("--resolution", type=positive_int, default=None, help="image size (default: the sharpener's training resolution, else the model's native size)")
    a("--batch_gpu", type=positive_int, default=8, help="images per batch per process")
    a("--seed", type=non_negative_int, default=0, help="image i uses seed + i")
    a("--outdir", default="samples", help="parent folder of the per-configuration folders")
    a("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="model dtype (default: fp16 on GPU, fp32 on CPU)")
    a("--enable_xformers_memory_efficient_attention", action="store_true")
    return p


def resolve(args) -> dict:
    """Decide family, base model, trained method, negative prompts and prompts from the arguments, and
    check them all; only the trained model's small files are read, the base model is not loaded yet."""
    sharpener_spec = args.sharpener_path or args.sharpener_id
    if args.sharpener_path and args.sharpener_id and args.sharpener_path != args.sharpener_id:
        raise UserError("--sharpener_path and --sharpener_id name different sharpeners. Give one of them")
    if args.model_path and sharpener_spec:
        raise UserError("--model_path and --sharpener_path/--sharpener_id both name a trained model. Give one of them")
    model = args.pretrained_model_name_or_path or args.model_name
    family = args.family
    if sharpener_spec is not None and model == args.model_name and model in families():
        family, model = family or model, None  # the authors' --model_name: the family; the base model is the sharpener's
    implied_options = MODEL_FAMILY_OPTIONS.get(model, {})
    if model in MODELS:
        family, model = family or MODELS[model][0], MODELS[model][1]
    config = weights = sharpener = name = method = trained_folder = None
    if args.model_path:
        config_path = resolve_trained_config(args.model_path, args.exps_root)
        if read_config(config_path).method == "dice":
            sharpener_spec = args.model_path  # a sharpener: the same as --sharpener_path
        else:
            config = read_config(config_path)
            method = method_class(config.method)()
            method.check_family(adapter_class(config.family))
            trained_folder = config_path.parent
            name = trained_folder.parent.name  # the run folder: its number names the sample folder
            _check_distilled_options(args, config, model)
    if sharpener_spec is not None:
        weights, config_path = resolve_sharpener_files(sharpener_spec, args.exps_root, args.sharpener_revision)
        config = read_config(config_path)
        if args.alpha != 0:  # alpha 0: c + 0 * f(c, u) = c exactly, the base model itself, labelled as such
            sharpener, _ = load_sharpener(weights)
        # What names it in the options and the folder name: its Hub repo id, its Hub-layout folder or its run.
        if is_repo_id(str(sharpener_spec)):
            name = str(sharpener_spec)
        else:
            name = weights.parent.name if weights.name == HUB_WEIGHTS_NAME else weights.parent.parent.name
    if method is None and args.gd_scale is not None:
        raise UserError("--gd_scale is the guidance scale of a GD or PnP model. Give one with --model_path, or drop --gd_scale")
    if args.embedding_scale != 1 and config is not None:
        raise UserError("--embedding_scale is the training-free Scaling baseline on the base model. Drop it, or drop the "
                        "trained model (--model_path / --sharpener_path)")
    source = str(trained_folder or weights)
    if config is not None:
        model = model or model_location(config.base_model)
    if model is None:
        raise UserError("no base model. Give --sharpener_path (a trained sharpener) or --pretrained_model_name_or_path/--model_name")
    model = absolute_if_local(model)
    detected = detect_family(model, args.revision) if family is None or config is not None else None
    if config is not None:
        if family and family != config.family:
            raise UserError(f"--family {family}, but '{source}' was trained for {config.family}. "
                            f"Use a {family} model, or drop --family")
        if detected and detected != config.family:
            raise UserError(
                f"'{model}' is a {detected} model, but '{source}' was trained for {config.family} "
                f"(on {config.base_model}). Pass a {config.family} base model with --pretrained_model_name_or_path, "
                f"or use one trained for {detected}"
            )
        family = config.family
    family = family or detected or "sd15"
    for option, owner in COMPONENT_OPTIONS.items():
        if getattr(args, option) and option not in adapter_class(family).option_defaults:
            raise UserError(f"--{option} applies to {owner} only, and this is a {family} model. Drop it")
    scheduler = args.scheduler or adapter_class(family).default_scheduler
    adapter_class(family).check_scheduler(scheduler_choice(scheduler)[0])
    prompts = [(i, p) for i, p in enumerate(args.prompt)] if args.prompt else load_prompts(args.prompts)
    prompt_set_size = len(prompts)
    prompts = prompts[: args.num_images]
    if not prompts:
        raise UserError(f"--prompts '{args.prompts}' holds no prompts. Put one prompt per line in it (blank lines are skipped)")
    check_output_dir(args.outdir, "--outdir")
    uses_trained_negatives = sharpener is not None  # GD and PnP sample without CFG: no u at all
    return {"family": family, "model": model, "implied_options": implied_options, "scheduler": scheduler,
            "sharpener": str(weights) if sharpener is not None else None,
            "sharpener_module": sharpener, "config": config,
            "prompts": prompts, "negatives": negative_prompts(args, config if uses_trained_negatives else None, prompts),
            "sharpener_name": name if sharpener is not None else None, "method": method,
            "trained_folder": trained_folder, "trained_name": name if method else None,
            "prompt_set_size": prompt_set_size}


def _check_distilled_options(args, config, model: str | None) -> None:
    """GD and PnP replace CFG and DICE's strength; GD replaces the whole denoiser of its base model."""
    if args.cfg_scale != 1:
        raise UserError(f"a {config.method} model replaces CFG: its guidance scale is --gd_scale (one denoiser evaluation "
                        "per step). Drop --cfg_scale")
    if args.alpha != 1:
        raise UserError(f"--alpha is DICE's strength; a {config.method} model's is --gd_scale. Drop --alpha")
    if config.method == "gd" and model and not same_base_model(model, config.base_model):
        raise UserError(f"a GD model is a fine-tuned copy of the whole denoiser of {config.base_model}, sampled with that "
                        "model's VAE and text encoder. Drop --pretrained_model_name_or_path/--model_name")


def negative_prompts(args, config, prompts: list[tuple[int, str]]) -> tuple[dict[int, str], str | dict]:
    """(u per prompt index, what sampling_options.json records): by default u as the sharpener was trained."""
    trained = NegativePrompts(config.negative_prompts, config.negative_prompt_prob) if config else NegativePrompts()
    if args.negative_prompt is None:
        if not trained.only_empty:
            logger.info("negative prompt u: %s, as the sharpener was trained (--negative_prompt overrides)", trained.describe())
        return {i: trained.for_image(image_seed(args.seed, i)) for i, _ in prompts}, trained.to_options()
    if config is not None and (not trained.only_empty or args.negative_prompt != ""):
        logger.warning("warning: --negative_prompt %r overrides u the sharpener was trained with (%s)",
                       args.negative_prompt, trained.describe())
    return {i: args.negative_prompt for i, _ in prompts}, args.negative_prompt


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = resolve(args)
    config, sharpener, prompts, distilled = plan["config"], plan["sharpener_module"], plan["prompts"], plan["method"]
    negatives, negative_option = plan["negatives"]
    trained_model = config.base_model if config else None
    same_model = same_base_model(plan["model"], trained_model)
    if (sharpener is not None or distilled) and not same_model:
        logger.info("cross-model: %s was trained on %s and is applied to %s", "the sharpener" if sharpener is not None
                    else f"the {distilled.title} guide", trained_model, plan["model"])
    state = process_state(cpu=needs_cpu_process_group())
    precision = args.mixed_precision or ("fp16" if state.device.type == "cuda" else "no")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    family_options = {**(config.family_options if config else {}), **plan["implied_options"]}
    for option in COMPONENT_OPTIONS:
        if getattr(args, option):
            family_options[option] = absolute_if_local(getattr(args, option))
    trained_options = config.training_options if config and same_model else {}
    adapter = adapter_class(plan["family"]).from_pretrained(
        plan["model"], revision=args.revision or (config.base_model_revision if same_model else None),
        variant=args.variant, torch_dtype=dtype,
        single_file_config=args.single_file_config or trained_options.get("single_file_config"), **family_options)
    if sharpener is not None:
        check_sharpener_fits(config, plan["sharpener"], dim=adapter.text_dim)
    # Default size: what the sharpener was trained at (e.g. 1024 for SDXL, 32 for the tiny demo).
    trained_resolution = config.training_options.get("resolution") if config else None
    resolution = args.resolution or trained_resolution or adapter.default_resolution
    if resolution % adapter.resolution_multiple:
        raise UserError(f"--resolution {resolution} is not a multiple of {adapter.resolution_multiple} (the latent grid "
                        f"of {plan['model']}). Pass a multiple of {adapter.resolution_multiple}")
    adapter.freeze(state.device, dtype)
    trained = None
    if sharpener is not None:
        sharpener.to(state.device)
        trained = TrainedModel(DiceMethod(), sharpener, config)
    elif distilled:
        check_sharpener_fits(config, str(plan["trained_folder"]), dim=adapter.text_dim)
        trained = TrainedModel(distilled, distilled.load(plan["trained_folder"], config, state.device, dtype), config)
    if args.enable_xformers_memory_efficient_attention:
        adapter.enable_xformers()
    use_scheduler(adapter, plan["scheduler"])

    gd_scale = args.gd_scale if args.gd_scale is not None else GUIDANCE_SCALE
    per_step = trained.method.evaluations_per_step(adapter, trained.module) if trained else 1
    options = {
        "family": plan["family"], "base_model": plan["model"], "family_options": dict(adapter.options),
        "method": method_name(trained.method.name if trained else None, args.cfg_scale, args.embedding_scale),
        "cfg_scale": args.cfg_scale, "alpha": args.alpha if sharpener is not None else None,
        "steps": args.steps, "nfe": nfe(args.steps, per_step, args.cfg_scale), "scheduler": plan["scheduler"],
        "resolution": resolution, "seed": args.seed, "negative_prompt": negative_option,
        "prompts": "cli" if args.prompt else args.prompts, "num_images": len(prompts), "sharpener": plan["sharpener"],
        "sharpener_step": config.step if sharpener is not None else None,
        # The results table compares with the paper only whole prompt sets and final checkpoints.
        "prompt_set_size": plan["prompt_set_size"],
        "sharpener_max_train_steps": config.training_options.get("max_train_steps") if sharpener is not None else None,
        "sharpener_experiment": plan["sharpener_name"],
        # The model the sharpener was trained on: differs from base_model in cross-model transfer (paper Fig. 6).
        "sharpener_base_model": trained_model if sharpener is not None else None,
        "trainable_parameters": count_parameters(trained.module) if trained else None,
        "precision": precision,
    }
    if distilled:
        options.update(gd_scale=gd_scale, trained_model=str(plan["trained_folder"]), trained_step=config.step,
                       trained_max_train_steps=config.training_options.get("max_train_steps"),
                       trained_experiment=plan["trained_name"], trained_base_model=trained_model)
    if args.embedding_scale != 1:
        options["embedding_scale"] = args.embedding_scale
    # What else changes the pixels: the stock pipeline's output filters switched off (SD1.5's safety checker), how a
    # baseline's empty-prompt u is made where that is a choice (SDXL: the stock pipeline's zeros; a trained model's is
    # its family_options' empty_prompt), and the preset the trained model was trained with.
    if adapter.removed_output_filters:
        options["output_filters_off"] = adapter.removed_output_filters
    if trained is None and adapter.null_embedding(stock=True):
        options["null_embedding"] = adapter.null_embedding(stock=True)
    if config is not None:
        options["trained_preset"] = config.training_options.get("preset")
    folder = Path(args.outdir) / "pending"
    if state.is_main_process:
        folder = prepare_folder(Path(args.outdir), options)
        write_manifest(folder, prompts, args.seed, negatives)  # from the start: evaluators read completeness from it
    folder = Path(_broadcast(str(folder), state))
    made = sample_prompts(
        adapter, prompts, folder, trained=trained, alpha=args.alpha, gd_scale=gd_scale, embedding_scale=args.embedding_scale,
        cfg_scale=args.cfg_scale, steps=args.steps,
        negative_prompt=negatives, resolution=resolution, seed=args.seed,
        batch_size=args.batch_gpu, rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone,
    )
    if state.is_main_process:
        count = write_manifest(folder, prompts, args.seed, negatives)
        if args.model_name in families() and args.sharpener_id is not None:
            authors_folder_alias(folder, f"{args.model_name}_{args.sharpener_id}_steps{args.steps}_alpha{args.alpha}")
        logger.info("%s: %d/%d images (%d new on this process); options in %s", folder, count, len(prompts), made, OPTIONS_FILE)
    return folder


def nfe(steps: int, evaluations_per_step: float, cfg_scale: float) -> float | int:
    """Network evaluations for ``steps`` as Table 1 counts them: CFG doubles them, PnP's guide adds its share."""
    total = steps * evaluations_per_step * (2 if cfg_scale > 1 else 1)
    return int(total) if float(total).is_integer() else round(total, 1)


def authors_folder_alias(folder: Path, name: str) -> Path:
    """A link ``<outdir>/<name>`` to ``folder``: the folder name the authors' README evaluates."""
    alias = folder.parent / name
    if alias.is_symlink() and alias.resolve() != folder.resolve():
        alias.unlink()  # an older configuration under the same authors' name: theirs names fewer options than ours
    if not alias.exists():
        alias.symlink_to(folder.name, target_is_directory=True)
        logger.info("also reachable as %s (the authors' folder name)", alias)
    return alias


def _broadcast(value: str, state) -> str:
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box)
    return box[0]
