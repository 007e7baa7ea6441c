"""Command line of sample.py: options -> adapter + sharpener -> dice.sampling.sample_prompts."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from .experiments import DEFAULT_ROOT
from .presets import MODELS
from .runtime import needs_cpu_process_group
from .sampling import OPTIONS_FILE, SCHEDULERS, method_name, prepare_folder, sample_prompts, use_scheduler, write_manifest

logger = logging.getLogger("dice")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--sharpener_path", default=None, help="DICE: experiment id (3), run folder, checkpoint-<step> folder, sharpener.safetensors, "
      "a folder written by python -m dice.export, or a Hub repo id (owner/name)")
    a("--sharpener_revision", default=None, help="branch, tag or commit of a Hub sharpener")
    a("--sharpener_id", default=None, help="same as --sharpener_path with an experiment id (the authors' flag)")
    a("--exps_root", default=DEFAULT_ROOT, help="where experiment ids are looked up")
    a("--pretrained_model_name_or_path", default=None, help="base model (default: the one the sharpener was trained on)")
    a("--model_name", default=None, help=f"base model by short name ({', '.join(MODELS)}) or id/path; same as --pretrained_model_name_or_path")
    a("--family", default=None, choices=["sd15", "sdxl", "pixart"], help="model family when it cannot be detected (default: detected)")
    a("--revision", default=None)
    a("--variant", default=None)
    a("--single_file_config", default=None, help="diffusers folder or hub id with the config of a single-file model")
    a("--alpha", type=float, default=1.0, help="DICE strength (1 = as trained)")
    a("--cfg_scale", type=float, default=1.0, help="CFG scale; 1 = unguided (one network evaluation per step)")
    a("--steps", type=int, default=20, help="sampling steps")
    a("--scheduler", default="dpmsolver++", help=f"one of {sorted(SCHEDULERS)} or a diffusers scheduler class name")
    a("--negative_prompt", default="", help="negative prompt: the CFG negative and DICE's sharpener context")
    a("--prompt", action="append", default=None, help="a prompt (repeatable); overrides --prompts")
    a("--prompts", default="coco5k", help="coco5k (the paper's 5,000 MS-COCO val2017 captions), a .txt or a .jsonl file")
    a("--num_images", type=int, default=None, help="only the first N prompts")
    a("--resolution", type=int, default=None, help="image size (default: the sharpener's training resolution, else the family's)")
    a("--batch_gpu", type=int, default=8, help="images per batch per process")
    a("--seed", type=int, default=0, help="image i uses seed + i")
    a("--outdir", default="samples", help="parent folder of the per-configuration folders")
    a("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="model dtype (default: fp16 on GPU, fp32 on CPU)")
    a("--enable_xformers_memory_efficient_attention", action="store_true")
    return p


def resolve(args) -> dict:
    """Decide family, base model and sharpener from the arguments; nothing is loaded yet."""
    sharpener_spec = args.sharpener_path or args.sharpener_id
    if args.sharpener_path and args.sharpener_id and args.sharpener_path != args.sharpener_id:
        raise SystemExit("error: give --sharpener_path or --sharpener_id, not both")
    model = args.pretrained_model_name_or_path or args.model_name
    family = args.family
    if model in MODELS:
        family, model = family or MODELS[model][0], MODELS[model][1]
    config = name = None
    if sharpener_spec is not None:
        import json

        from .checkpoint import SharpenerConfig, resolve_sharpener_files
        from .hub import HUB_WEIGHTS_NAME, is_repo_id

        weights, config_path = resolve_sharpener_files(sharpener_spec, args.exps_root, args.sharpener_revision)
        config = SharpenerConfig.from_dict(json.loads(config_path.read_text()))
        family = family or config.family
        model = model or config.base_model
        # What names it in the options and the folder name: its Hub repo id, its Hub-layout folder or its run.
        if is_repo_id(str(sharpener_spec)):
            name = str(sharpener_spec)
        else:
            name = weights.parent.name if weights.name == HUB_WEIGHTS_NAME else weights.parent.parent.name
        sharpener_spec = str(weights)
    if sharpener_spec is not None and args.alpha == 0:
        # c + 0 * f(c, u) = c exactly: the base model itself (unguided or CFG), labelled as such.
        sharpener_spec = None
    if model is None:
        raise SystemExit("error: no base model: give --sharpener_path (a trained sharpener) or --pretrained_model_name_or_path/--model_name")
    if family is None:
        from .adapters.registry import detect_family

        family = detect_family(model, args.revision) or "sd15"
    return {"family": family, "model": model, "sharpener": sharpener_spec, "config": config,
            "sharpener_name": name if sharpener_spec else None}


def main(argv: list[str] | None = None) -> Path:
    from accelerate import PartialState

    from .adapters import adapter_class
    from .checkpoint import load_sharpener
    from .prompts import load_prompts

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        plan = resolve(args)
        prompts = [(i, p) for i, p in enumerate(args.prompt)] if args.prompt else load_prompts(args.prompts)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    if args.num_images is not None:
        prompts = prompts[: args.num_images]
    state = PartialState(cpu=needs_cpu_process_group())
    precision = args.mixed_precision or ("fp16" if state.device.type == "cuda" else "no")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    config = plan["config"]
    family_options = dict(config.family_options) if config else {}
    try:
        adapter = adapter_class(plan["family"]).from_pretrained(
            plan["model"], revision=args.revision or (config.base_model_revision if config else None),
            variant=args.variant, torch_dtype=dtype, single_file_config=args.single_file_config, **family_options)
        sharpener = None
        if plan["sharpener"]:
            sharpener, _ = load_sharpener(plan["sharpener"], family=plan["family"], dim=adapter.text_dim)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from err
    adapter.freeze(state.device, dtype)
    if sharpener is not None:
        sharpener.to(state.device)
    if args.enable_xformers_memory_efficient_attention:
        adapter.enable_xformers()
    use_scheduler(adapter, args.scheduler)

    # Default size: what the sharpener was trained at (e.g. 1024 for SDXL, 32 for the tiny demo).
    trained_resolution = config.training_options.get("resolution") if config else None
    method = method_name(sharpener is not None, args.cfg_scale)
    options = {
        "family": plan["family"], "base_model": plan["model"], "family_options": dict(adapter.options),
        "method": method, "cfg_scale": args.cfg_scale, "alpha": args.alpha if sharpener is not None else None,
        "steps": args.steps, "nfe": args.steps * (2 if args.cfg_scale > 1 else 1), "scheduler": args.scheduler,
        "resolution": args.resolution or trained_resolution or adapter.default_resolution, "seed": args.seed,
        "negative_prompt": args.negative_prompt, "prompts": "cli" if args.prompt else args.prompts,
        "num_images": len(prompts), "sharpener": plan["sharpener"],
        "sharpener_step": config.step if config else None,
        "sharpener_experiment": plan["sharpener_name"],
        "precision": precision,
    }
    folder = Path(args.outdir) / "pending"
    if state.is_main_process:
        folder = prepare_folder(Path(args.outdir), options)
    folder = Path(_broadcast(str(folder), state))
    made = sample_prompts(
        adapter, prompts, folder, sharpener=sharpener, alpha=args.alpha, cfg_scale=args.cfg_scale, steps=args.steps,
        negative_prompt=args.negative_prompt, resolution=options["resolution"], seed=args.seed,
        batch_size=args.batch_gpu, rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone,
    )
    if state.is_main_process:
        count = write_manifest(folder, prompts, args.seed)
        logger.info("%s: %d/%d images (%d new on this process); options in %s", folder, count, len(prompts), made, OPTIONS_FILE)
    return folder


def _broadcast(value: str, state) -> str:
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box)
    return box[0]
