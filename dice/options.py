"""The training command line: every option of train_sd15.py / train_sdxl.py / train_pixart.py / ..., its preset value,
and every check that needs neither a model nor a file written (checked before anything is loaded)."""
from __future__ import annotations

import argparse

import torch

from . import experiments
from .adapters import adapter_class
from .adapters.base import COMPILE_CHOICES, absolute_if_local
from .adapters.registry import entry_script
from .distillation import LOSS_TYPES, REDUCTIONS
from .errors import (
    ArgumentParser,
    UserError,
    fraction,
    guidance_scale,
    non_negative_float,
    non_negative_int,
    one_line,
    positive_float,
    positive_int,
    probability,
)
from .methods import METHODS, method_class
from .methods.base import OMEGA_DRAWS
from .methods.gd import OMEGA_STUDENT_INPUTS
from .paper import SHARPENER_HEADS, SHARPENER_INNER_DIM
from .presets import PRESETS, preset
from .sharpener import Sharpener

# --denoiser_autocast choices -> torch dtype.
DENOISER_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}

DEFAULT_VALIDATION_PROMPTS = [
    "a red ball on a green field", "a photo of a cat sitting on a chair",
    "a small blue house next to a tree", "a yellow car on the street",
]


def sharpener_parameters(dim: int, inner_dim: int = SHARPENER_INNER_DIM, num_heads: int = SHARPENER_HEADS) -> int:
    """Parameters of the paper's sharpener layout (A.1) for ``dim``-wide text embeddings (built on the meta device)."""
    with torch.device("meta"):
        return sum(p.numel() for p in Sharpener(dim, inner_dim, num_heads).parameters())


def build_parser(family: str) -> ArgumentParser:
    dim = adapter_class(family).released_text_dim
    p = ArgumentParser(
        prog=entry_script(family),
        description=f"Train a DICE sharpener (or a GD / PnP baseline) for a frozen {family} model (run under "
        "`accelerate launch`). Options left unset take the --preset's value. The sharpener (paper A.1: width 512, 8 heads) "
        f"of the released {family} models ({dim}-wide text embeddings) has {sharpener_parameters(dim):,} parameters.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    # Base model and data.
    a("--pretrained_model_name_or_path", required=True, help="hub id, local diffusers folder, or single .safetensors/.ckpt file")
    a("--revision", default=None, help="hub revision of the base model")
    a("--variant", default=None, help="weights variant of the base model, e.g. fp16")
    a("--single_file_config", default=None, help="diffusers folder or hub id with the pipeline config for a single-file model (needed offline)")
    a("--train_data_dir", required=True, help="MS-COCO 2017 root (train2017/ + annotations/) or a folder with metadata.jsonl")
    a("--resolution", type=positive_int, default=None, help="training resolution (centre crop + resize)")
    # Sharpener structure (paper A.1: inner width 512, 8 heads; "insensitive to model structure").
    a("--sharpener_inner_dim", type=positive_int, default=None, help="DICE: width of the sharpener's cross-attention (paper A.1: 512)")
    a("--sharpener_heads", type=positive_int, default=None, help="DICE: attention heads of the sharpener; must divide --sharpener_inner_dim (paper: 8)")
    a("--project_u_once", action=argparse.BooleanOptionalAction, default=None, help="DICE: where every sample of a batch "
      "has the same u (the empty prompt: no --negative_prompts), project it through the sharpener once per batch, not "
      "once per sample. The same function, other float rounding; pays where the sharpener is a large part of an update "
      "(the shapes world: about 20%% less time), not beside a large denoiser")
    a("--dataloader_num_workers", type=non_negative_int, default=2, help="image-decoding worker processes per GPU")
    a("--latent_cache", default=None, metavar="DIR", help="encode every training image with the VAE once into safetensors shards in DIR "
      "(reused by later runs with the same data, VAE and resolution), then train on the stored latents: no JPEG decoding, no VAE per step")
    a("--negative_prompts", default=None, help="file with one negative prompt per line (paper 3.2), or 'default' for dice/assets/negative_prompts.txt; u is one of them with --negative_prompt_prob")
    a("--negative_prompt_prob", type=probability, default=1.0, help="probability that a sample's u is a random negative prompt rather than the empty prompt (needs --negative_prompts; 1 = the paper's 'negative text embeddings replace all null text embeddings')")
    # Recipe.
    a("--method", choices=METHODS, default="dice", help="what is trained: dice (the sharpener), gd (guidance distillation: "
      "the whole denoiser with the guidance scale as an input), pnp (a ControlNet guide network beside the frozen denoiser)")
    a("--preset", default="paper", choices=sorted(PRESETS[family]), help="paper settings, the authors' scripts, or the tiny demo")
    a("--train_batch_size", type=positive_int, default=None, help="batch per process")
    a("--gradient_accumulation_steps", type=positive_int, default=None, help="micro-batches per update")
    a("--max_train_steps", type=positive_int, default=None, help="optimizer updates")
    a("--learning_rate", type=positive_float, default=None)
    a("--lr_scheduler", default=None, help="diffusers scheduler name: constant, constant_with_warmup, linear, cosine, ...")
    a("--lr_warmup_steps", type=non_negative_int, default=None)
    a("--adam_beta1", type=fraction, default=0.9)
    a("--adam_beta2", type=fraction, default=0.999)
    a("--adam_weight_decay", type=non_negative_float, default=None, help="AdamW decoupled weight decay (0 = Adam, the paper)")
    a("--adam_epsilon", type=positive_float, default=1e-8)
    a("--guidance_scale", type=guidance_scale, default=None, help="CFG scale w of the teacher (default: the paper's 5, or "
      "the model card's for a model that has one, e.g. SD3.5 Medium 4.5; gd/pnp: a fixed ω instead of --guidance_scale_range)")
    a("--guidance_scale_range", type=guidance_scale, nargs=2, metavar=("LOW", "HIGH"), default=None,
      help="gd/pnp: the teacher's CFG scale ω is drawn per sample uniformly from [LOW, HIGH) and given to the student")
    a("--loss_type", choices=LOSS_TYPES, default=None, help="mse (paper) or l1 (authors' SD1.5 script)")
    a("--loss_reduction", choices=REDUCTIONS, default=None, help="mean over elements (paper preset); sum_per_sample: each "
      "sample's error sum, averaged over the batch; sum_per_global_batch: the micro-batch's error sum / global batch, "
      "exactly the authors' loss (with DDP: sum_per_sample divided by processes x accumulation)")
    a("--shared_timestep", action=argparse.BooleanOptionalAction, default=None, help="one timestep for the whole batch on all processes (authors) instead of one per sample")
    a("--denoiser_autocast", choices=DENOISER_AUTOCAST, default=None, help="run the frozen denoiser (and PnP's guide) under "
      "torch.autocast to this dtype: fp16 = the authors' runs (networks cast to --mixed_precision bf16, called under "
      "torch.autocast('cuda'), i.e. fp16 compute); unset: compute in the dtype the networks are cast to")
    a("--omega_draw", choices=OMEGA_DRAWS, default=None, help="gd/pnp: the teacher's ω drawn once per sample (default) or "
      "once per global batch, the same on every process (authors)")
    a("--omega_student_input", choices=OMEGA_STUDENT_INPUTS, default=None, help="gd: the ω the student is given in training: "
      "the teacher's (float, default) or truncated to an integer (integer: the authors' runs)")
    a("--seed", type=non_negative_int, default=0, help="seed of the trained module's init, data order, noise, timesteps and ω")
    a("--ema_decay", type=fraction, default=None, help="keep an exponential moving average of the trained weights with this "
      "decay (diffusers' EMAModel: min(decay, (1+n)/(10+n)) at update n); checkpoints then hold the average for sampling "
      "beside the raw weights for resuming (off: the paper)")
    # Experiment folder, checkpoints, resume.
    a("--output_dir", default=experiments.DEFAULT_ROOT, help="root of the numbered experiment folders")
    a("--desc", default=None, help="suffix of the experiment folder name (default: family-model-preset)")
    a("--checkpointing_steps", type=positive_int, default=None, help="save a checkpoint every N updates (the last step is always saved)")
    a("--checkpoints_total_limit", type=positive_int, default=None, help="keep at most this many checkpoints")
    a("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-<step> folder; with 'latest' give --experiment")
    a("--experiment", default=None, help="experiment id or folder to continue (with --resume_from_checkpoint)")
    a("--validation_prompts", nargs="*", default=DEFAULT_VALIDATION_PROMPTS, help="prompts of the unguided/CFG/DICE grid saved at each checkpoint (none: no grid)")
    a("--validation_inference_steps", type=positive_int, default=20, help="sampling steps of the validation grid")
    a("--log_every", type=positive_int, default=10, help="write a progress line to log.txt every N updates")
    # Hardware.
    a("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="overrides accelerate launch's setting")
    a("--enable_xformers_memory_efficient_attention", action="store_true", help="xformers attention in the frozen model (falls back to PyTorch SDPA)")
    a("--gradient_checkpointing", action="store_true", help="recompute activations in the backward pass (less memory): the frozen "
      "denoiser's for dice, the student's for gd, both the guide's and the frozen denoiser's for pnp")
    a("--compile", nargs="?", const="full", choices=COMPILE_CHOICES, default=None,
      help="torch.compile the frozen denoiser: 'full' (the bare flag) the whole model, 'regional' each repeated block (compiles faster)")
    a("--channels_last", action="store_true", help="channels-last memory format for the frozen denoiser (faster convolutions on recent GPUs)")
    a("--n_gpus", type=positive_int, default=None, help="expected number of processes; an error if it differs from the real count")
    a("--report_to", default="none", help="accelerate tracker: tensorboard, wandb, ... or none")
    adapter_class(family).add_arguments(p)
    return p


# Options naming a model file or folder: recorded as absolute paths, so the run can be found again
# from any directory (sample.py reads the base model from the checkpoint).
LOCAL_MODEL_OPTIONS = ("pretrained_model_name_or_path", "single_file_config", "pretrained_vae_model_name_or_path",
                       "pretrained_transformer_model_name_or_path")


def resolve_options(family: str, args: argparse.Namespace) -> argparse.Namespace:
    """Fill every option the user did not give from the preset, and refuse impossible combinations;
    nothing is loaded or written yet."""
    method = method_class(args.method)
    method.check_family(adapter_class(family))
    if method.conditioned_on_scale:
        if args.guidance_scale is not None and args.guidance_scale_range is not None:
            raise UserError("--guidance_scale (a fixed ω) and --guidance_scale_range (ω drawn per sample) exclude each "
                            "other. Give one of them")
        if args.guidance_scale_range is not None and not args.guidance_scale_range[0] < args.guidance_scale_range[1]:
            low, high = args.guidance_scale_range
            raise UserError(f"--guidance_scale_range {low:g} {high:g} is empty. Give LOW < HIGH, e.g. 2 14")
    elif args.guidance_scale_range is not None:
        raise UserError(f"--guidance_scale_range applies to --method gd and pnp; {args.method} distils one scale. "
                        "Use --guidance_scale, or drop --guidance_scale_range")
    if args.omega_draw is not None and not method.conditioned_on_scale:
        raise UserError(f"--omega_draw applies to --method gd and pnp; {args.method} distils one scale. Drop --omega_draw")
    if args.omega_student_input is not None and args.method != "gd":
        raise UserError(f"--omega_student_input is GD's (the ω its student is told); --method {args.method} has no such "
                        "input. Drop --omega_student_input")
    fixed_scale = args.guidance_scale is not None
    if not fixed_scale and not method.conditioned_on_scale:  # DICE: the model makers' scale where they give one
        args.guidance_scale = adapter_class(family).default_guidance_scale(args.pretrained_model_name_or_path)
    for key, value in preset(family, args.preset, args.method).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, value in adapter_class(family).option_defaults.items():  # a family option neither given nor preset
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if fixed_scale and method.conditioned_on_scale:
        args.guidance_scale_range = None  # a fixed ω given: the preset's range does not apply
    for key in LOCAL_MODEL_OPTIONS:
        if getattr(args, key, None):
            setattr(args, key, absolute_if_local(getattr(args, key)))
    if args.negative_prompts is None and args.negative_prompt_prob != 1.0:
        raise UserError("--negative_prompt_prob needs --negative_prompts. Add --negative_prompts FILE (or 'default'), or drop --negative_prompt_prob")
    if args.method != "dice" and (args.sharpener_inner_dim or args.sharpener_heads or args.project_u_once):
        raise UserError(f"--sharpener_inner_dim / --sharpener_heads / --project_u_once concern DICE's sharpener, and "
                        f"--method {args.method} trains none. Drop them")
    args.project_u_once = bool(args.project_u_once)
    args.sharpener_inner_dim = args.sharpener_inner_dim or SHARPENER_INNER_DIM
    args.sharpener_heads = args.sharpener_heads or SHARPENER_HEADS
    if args.sharpener_inner_dim % args.sharpener_heads:
        raise UserError(f"--sharpener_inner_dim {args.sharpener_inner_dim} is not divisible by --sharpener_heads {args.sharpener_heads}. "
                        "Pick a width that is a multiple of the number of heads (paper: 512 and 8)")
    if args.resume_from_checkpoint == "latest" and not args.experiment:
        raise UserError("--resume_from_checkpoint latest needs the run to continue. Add --experiment <id or folder>")
    if args.experiment and not args.resume_from_checkpoint:
        raise UserError("--experiment only names the run that --resume_from_checkpoint continues. Add --resume_from_checkpoint latest, or drop --experiment")
    _check_lr_scheduler(args)
    _check_report_to(args)
    return args


def _check_lr_scheduler(args) -> None:
    from diffusers.optimization import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        get_scheduler(args.lr_scheduler, probe, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps)
    except Exception as err:  # noqa: BLE001 - an unknown name, or one needing arguments we do not pass
        from diffusers.optimization import SchedulerType

        raise UserError(
            f"--lr_scheduler {args.lr_scheduler!r} cannot be used ({one_line(err)}). Choose one of: "
            + ", ".join(t.value for t in SchedulerType if t.value != "piecewise_constant")
        ) from None


def _check_report_to(args) -> None:
    if args.report_to == "none":
        return
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    if args.report_to not in LoggerType.list():
        raise UserError(f"--report_to {args.report_to!r} is not an accelerate tracker. Choose one of: none, {', '.join(LoggerType.list())}")
    if args.report_to != "all" and LoggerType(args.report_to) not in get_available_trackers():
        raise UserError(f"--report_to {args.report_to}: its package is not installed. Install it (pip install {args.report_to}), or pass --report_to none")
