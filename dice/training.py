"""The only training loop: fit a student to a frozen model's CFG predictions under accelerate.

Entry points (train_sd15.py, ...) call :func:`main` with their family; ``--method`` picks what is
trained (DICE's sharpener by default, GD's fine-tuned denoiser, PnP's guide network). Everything
per-family goes through the adapter, everything per-method through the method (dice.methods);
everything random is keyed by (seed, step, micro-step, rank), so a resumed run repeats an
uninterrupted one exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import shutil
import sys
from pathlib import Path

import torch

from . import experiments
from .adapters import Conditioning, adapter_class
from .adapters.base import COMPILE_CHOICES, absolute_if_local, hub_revision
from .checkpoint import checkpoint_config, read_config
from .data import load_records, make_loader, step_generator
from .errors import (
    ArgumentParser,
    UserError,
    check_output_dir,
    fraction,
    give_default_permissions,
    guidance_scale,
    is_disk_full,
    non_negative_float,
    non_negative_int,
    one_line,
    positive_float,
    positive_int,
    probability,
)
from .losses import LOSS_TYPES, REDUCTIONS, distillation_loss
from .methods import DEFAULT_SAMPLING_SCALE, METHODS, TrainedModel, method_class
from .negatives import NegativePrompts, read_negative_prompts
from .presets import PRESETS, preset
from .runtime import needs_cpu_process_group, to_device
from .sharpener import PAPER_HEADS, PAPER_INNER_DIM
from .step_log import StepLog

logger = logging.getLogger("dice")

DEFAULT_VALIDATION_PROMPTS = [
    "a red ball on a green field", "a photo of a cat sitting on a chair",
    "a small blue house next to a tree", "a yellow car on the street",
]


def build_parser(family: str) -> ArgumentParser:
    p = ArgumentParser(
        prog=f"train_{family}.py",
        description=f"Train a DICE sharpener (or a GD / PnP baseline) for a frozen {family} model (run under "
        "`accelerate launch`). Options left unset take the --preset's value.",
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
    a("--guidance_scale", type=guidance_scale, default=None, help="CFG scale w of the teacher (gd/pnp: a fixed ω instead of --guidance_scale_range)")
    a("--guidance_scale_range", type=guidance_scale, nargs=2, metavar=("LOW", "HIGH"), default=None,
      help="gd/pnp: the teacher's CFG scale ω is drawn per sample uniformly from [LOW, HIGH) and given to the student")
    a("--loss_type", choices=LOSS_TYPES, default=None, help="mse (paper) or l1 (authors' SD1.5 script)")
    a("--loss_reduction", choices=REDUCTIONS, default=None, help="mean (this repo) or sum_per_sample (authors)")
    a("--shared_timestep", action=argparse.BooleanOptionalAction, default=None, help="one timestep for the whole batch on all processes (authors) instead of one per sample")
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
LOCAL_MODEL_OPTIONS = ("pretrained_model_name_or_path", "single_file_config", "pretrained_vae_model_name_or_path")


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
    fixed_scale = args.guidance_scale is not None
    for key, value in preset(family, args.preset, args.method).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if fixed_scale and method.conditioned_on_scale:
        args.guidance_scale_range = None  # a fixed ω given: the preset's range does not apply
    for key in LOCAL_MODEL_OPTIONS:
        if getattr(args, key, None):
            setattr(args, key, absolute_if_local(getattr(args, key)))
    if args.negative_prompts is None and args.negative_prompt_prob != 1.0:
        raise UserError("--negative_prompt_prob needs --negative_prompts. Add --negative_prompts FILE (or 'default'), or drop --negative_prompt_prob")
    if args.method != "dice" and (args.sharpener_inner_dim or args.sharpener_heads):
        raise UserError(f"--sharpener_inner_dim / --sharpener_heads shape DICE's sharpener, and --method {args.method} trains "
                        "none. Drop them")
    args.sharpener_inner_dim = args.sharpener_inner_dim or PAPER_INNER_DIM
    args.sharpener_heads = args.sharpener_heads or PAPER_HEADS
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


class NegativeBank:
    """Embeddings of the empty prompt (index 0) and of every negative prompt, encoded once."""

    def __init__(self, adapter, negatives: NegativePrompts):
        self.prob = negatives.probability
        self.num_negatives = len(negatives.prompts)
        self.bank: Conditioning = adapter.encode_negative([""] + negatives.prompts)

    def sample(self, batch: int, generator: torch.Generator) -> Conditioning:
        index = torch.zeros(batch, dtype=torch.long)
        if self.num_negatives:
            use_negative = torch.rand(batch, generator=generator) < self.prob
            choice = torch.randint(1, self.num_negatives + 1, (batch,), generator=generator)
            index = torch.where(use_negative, choice, index)
        return self.bank.select(to_device(index, self.bank.embeds.device))


class WeightAverage:
    """--ema_decay: an exponential moving average of the trained module (diffusers' EMAModel), updated
    once per optimizer update. It is saved as the method's own files of each checkpoint (what sampling
    loads) and read back from them on resume, so a resumed run continues the same average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        from diffusers.training_utils import EMAModel

        self.names = [name for name, _ in model.named_parameters()]
        self.average = EMAModel(model.parameters(), decay=decay, foreach=True)

    def update(self, model: torch.nn.Module) -> None:
        self.average.step(model.parameters())

    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` holding the average."""
        import copy

        copied = copy.deepcopy(model).eval().requires_grad_(False)
        self.average.copy_to(copied.parameters())
        return copied

    def restore(self, method, checkpoint: Path, step: int) -> None:
        config = read_config(checkpoint_config(checkpoint))
        saved = dict(method.load(checkpoint, config, device=self.average.shadow_params[0].device,
                                 dtype=torch.float32).named_parameters())
        if list(saved) != self.names:
            raise RuntimeError(f"checkpoint '{checkpoint}' holds other weights than this run trains: {list(saved)[:3]}")
        for shadow, name in zip(self.average.shadow_params, self.names):
            shadow.copy_(saved[name])
        self.average.optimization_step = step


def _log_to_console(is_main: bool) -> None:
    """Log to stdout now; what is logged before the run folder exists goes into its log.txt later."""
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if is_main:
        logger.addHandler(_formatted(logging.StreamHandler(sys.stdout)))
        logger.addHandler(logging.handlers.MemoryHandler(capacity=1 << 16, flushLevel=logging.CRITICAL + 1))
    else:
        logger.addHandler(logging.NullHandler())


def _log_to_file(run_dir: Path, is_main: bool) -> None:
    if not is_main:
        return
    file_handler = _formatted(logging.FileHandler(run_dir / "log.txt"))
    for early in [h for h in logger.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        early.setTarget(file_handler)
        early.flush()
        logger.removeHandler(early)
    logger.addHandler(file_handler)


def _formatted(handler: logging.Handler) -> logging.Handler:
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    return handler


@contextlib.contextmanager
def _errors_into_log():
    """A run that fails after its folder exists says why in its log.txt (and still fails)."""
    try:
        yield
    except UserError as error:
        logger.error("error: %s", one_line(error))
        raise
    except BaseException:
        logger.exception("training stopped")
        raise


def _plan_run(family: str, args) -> tuple[Path | None, Path | None]:
    """(run folder to continue, checkpoint to resume from), checked before anything is loaded or written."""
    if not args.resume_from_checkpoint:
        check_output_dir(args.output_dir, "--output_dir")
        return None, None
    if args.resume_from_checkpoint == "latest":
        run_dir = experiments.resolve_run(args.experiment, args.output_dir)
        resume = experiments.latest_checkpoint(run_dir)  # none yet: start from scratch in it
    else:
        resume = Path(args.resume_from_checkpoint)
        experiments.checkpoint_step(resume)
        if checkpoint_config(resume) is None:
            raise UserError(f"--resume_from_checkpoint '{resume}' is not a complete checkpoint (no sharpener.json or "
                            "method.json). Pass another checkpoint-<step> folder, or 'latest'")
        run_dir = experiments.resolve_run(args.experiment, args.output_dir) if args.experiment else resume.parent
    check_output_dir(run_dir, "--experiment")
    if resume is not None:
        saved = read_config(checkpoint_config(resume))
        _check_resumable(saved, resume, family, args)
        saved_decay = saved.training_options.get("ema_decay")
        if saved_decay != args.ema_decay:
            raise UserError(f"'{resume}' was trained with --ema_decay {saved_decay}, this command gives {args.ema_decay}: "
                            "the moving average cannot be continued. Resume with the run's own --ema_decay")
    return run_dir, resume


def _check_resumable(saved, resume: Path, family: str, args) -> None:
    """A checkpoint of another family, method or sharpener shape holds weights of other shapes: refused
    here, before loading, rather than as a tensor size mismatch inside accelerate."""
    ours = {"family": family, "method": args.method}
    theirs = {"family": saved.family, "method": saved.method}
    if args.method == "dice" and saved.method == "dice":
        ours.update(sharpener_inner_dim=args.sharpener_inner_dim, sharpener_heads=args.sharpener_heads)
        theirs.update(sharpener_inner_dim=saved.inner_dim, sharpener_heads=saved.num_heads)
    differ = [f"{name} {theirs[name]} (this command: {ours[name]})" for name in ours if theirs[name] != ours[name]]
    if differ:
        script = f"train_{saved.family}.py"
        raise UserError(f"--resume_from_checkpoint '{resume}' was trained with {', '.join(differ)}, so this run cannot "
                        f"continue it. Resume it with {script} and its own options (training_options.json of its run), "
                        "or start a new run without --resume_from_checkpoint")


def _check_resume_width(resume: Path | None, adapter, args) -> None:
    """The text width is known once the base model is loaded: still before anything is written."""
    if resume is None:
        return
    saved = read_config(checkpoint_config(resume))
    if saved.dim != adapter.text_dim:
        raise UserError(f"--resume_from_checkpoint '{resume}' was trained on {saved.dim}-wide text embeddings "
                        f"({saved.base_model}), but {args.pretrained_model_name_or_path} gives {adapter.text_dim}-wide ones. "
                        "Resume it with the base model it was trained on, or start a new run without --resume_from_checkpoint")


def _create_run_dir(accelerator, args, family: str, run_dir: Path | None) -> Path:
    """The main process makes the numbered folder (or tidies the resumed one); everyone gets its path."""
    from accelerate.utils import broadcast_object_list

    decided = [str(run_dir) if run_dir else None]
    if accelerator.is_main_process:
        if run_dir is None:
            model_name = Path(args.pretrained_model_name_or_path.rstrip("/")).name.replace(".safetensors", "")
            method = "" if args.method == "dice" else f"{args.method}-"
            decided = [str(experiments.create_run_dir(args.output_dir, args.desc or f"{family}-{model_name}-{method}{args.preset}"))]
        else:
            experiments.remove_incomplete_checkpoints(run_dir)
    broadcast_object_list(decided)
    return Path(decided[0])


def _load_adapter(family: str, args, accelerator, weight_dtype: torch.dtype):
    adapter = adapter_class(family).from_args(args, torch_dtype=weight_dtype)
    if args.resolution % adapter.resolution_multiple:
        raise UserError(
            f"--resolution {args.resolution} is not a multiple of {adapter.resolution_multiple} (the latent grid of "
            f"{args.pretrained_model_name_or_path}). Pass a multiple of {adapter.resolution_multiple}"
        )
    adapter.freeze(accelerator.device, weight_dtype)
    if args.enable_xformers_memory_efficient_attention:
        adapter.enable_xformers()
    if args.channels_last:
        adapter.denoiser.to(memory_format=torch.channels_last)
    if args.compile:
        adapter.compile_denoiser(args.compile)
    return adapter


def _save_checkpoint(accelerator, run_dir: Path, step: int, method, sampled, config, limit) -> Path:
    """Write into a hidden temporary folder, then rename: a crash never leaves a half checkpoint.

    accelerate's state (the raw trained weights, optimizer, lr schedule) is for resuming; the method's
    own files hold ``sampled``, the weights sampling uses (the moving average with --ema_decay)."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            config.step = step
            method.save(tmp, sampled, config)
            give_default_permissions(*(path for path in tmp.rglob("*") if path.is_file()))
    except Exception as err:
        if not is_disk_full(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        free_mib = shutil.disk_usage(run_dir).free / 2**20
        raise UserError(
            f"no space left on device while saving checkpoint {step} into '{tmp}' ({free_mib:.0f} MiB free; the "
            f"earlier checkpoints are intact). Free space on that disk, then continue with "
            f"--resume_from_checkpoint latest --experiment {run_dir}"
        ) from err
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for removed in experiments.prune_checkpoints(run_dir, limit):
            logger.info("removed old checkpoint %s (--checkpoints_total_limit %s)", removed.name, limit)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final


def _check_replicas_identical(accelerator, model) -> str:
    """Every process must hold the same trained weights (DDP keeps them in sync); fail loudly if not."""
    import hashlib

    from accelerate.utils import gather_object

    digest = hashlib.sha256()
    for tensor in accelerator.unwrap_model(model).state_dict().values():
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    digests = gather_object([digest.hexdigest()])
    if len(set(digests)) != 1:
        raise RuntimeError(f"trained weights differ between processes: {digests}")
    logger.info("trained weights identical on all %d process(es) (sha256 %s)", len(digests), digests[0][:16])
    return digests[0]


def _validation_grid(adapter, trained: TrainedModel, args, negatives: NegativePrompts, run_dir: Path, step: int) -> None:
    from .sampling import generate, image_grid, use_scheduler, write_atomic

    if not args.validation_prompts:
        return
    use_scheduler(adapter, "dpmsolver++")
    prompts = list(args.validation_prompts)
    seeds = list(range(len(prompts)))  # fixed seeds: grids of different steps are comparable
    # u as in training (and as sample.py draws it), for the CFG teacher and DICE alike.
    common = dict(steps=args.validation_inference_steps, resolution=args.resolution,
                  negative_prompt=[negatives.for_image(s) for s in seeds])
    # GD and PnP trained over a range of scales: shown at the scale they are sampled at.
    w = args.guidance_scale or DEFAULT_SAMPLING_SCALE
    rows = [
        generate(adapter, prompts, seeds, cfg_scale=1.0, **common),
        generate(adapter, prompts, seeds, cfg_scale=w, **common),
        generate(adapter, prompts, seeds, trained=trained, gd_scale=w, **common),
    ]
    method = trained.method
    labels = ["unguided", f"CFG w={w:g}", method.title if method.combines_with_cfg else f"{method.title} ω={w:g}"]
    path = experiments.validation_grid_path(run_dir, step)
    path.parent.mkdir(exist_ok=True)
    grid = image_grid(rows, labels)
    write_atomic(path, lambda tmp: grid.save(tmp, format="PNG"))
    logger.info("validation grid: %s", path)


def _regenerate_missing_grids(adapter, method, args, negatives: NegativePrompts, run_dir: Path) -> None:
    """After a crash, a saved checkpoint may lack its grid (killed while drawing it): draw it again."""
    if not args.validation_prompts:
        return
    for checkpoint in experiments.list_checkpoints(run_dir):
        step = experiments.checkpoint_step(checkpoint)
        path = experiments.validation_grid_path(run_dir, step)
        if not path.is_file() or path.stat().st_size == 0:
            config = read_config(checkpoint_config(checkpoint))
            module = method.load(checkpoint, config, device=adapter.device, dtype=adapter.dtype)
            _validation_grid(adapter, TrainedModel(method, module, config), args, negatives, run_dir, step)


def _keep_stats_until(stats_path: Path, step: int) -> None:
    """On resume, drop the lines of steps after the checkpoint: they are trained again."""
    if not stats_path.is_file():
        return
    from .sampling import write_atomic

    def logged_step(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            return float("inf")

    lines = stats_path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if logged_step(line) <= step]
    if len(kept) != len(lines):
        write_atomic(stats_path, lambda tmp: tmp.write_text("".join(kept)))


def train(family: str, args: argparse.Namespace) -> Path:
    """Check the run, data and model, then make the experiment folder and train the method in it."""
    from accelerate import Accelerator

    # Everything that can be checked before minutes of model loading, and before anything is written.
    continue_run, resume_from = _plan_run(family, args)
    layout, records = load_records(args.train_data_dir)
    negatives = NegativePrompts(read_negative_prompts(args.negative_prompts), args.negative_prompt_prob if args.negative_prompts else 0.0)

    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to, project_dir=args.output_dir,
        cpu=needs_cpu_process_group(),
        # A prepared scheduler otherwise steps once per process per update, so every schedule but
        # "constant" would run num_processes times too fast; the loop steps it once per update instead.
        step_scheduler_with_optimizer=False,
    )
    if args.n_gpus is not None and args.n_gpus != accelerator.num_processes:
        raise UserError(
            f"--n_gpus={args.n_gpus} but accelerate started {accelerator.num_processes} process(es). "
            "Pass the same number to `accelerate launch --num_processes` and --n_gpus"
        )
    _log_to_console(accelerator.is_main_process)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    adapter = _load_adapter(family, args, accelerator, weight_dtype)
    _check_resume_width(resume_from, adapter, args)
    latent_cache = None
    if args.latent_cache:  # before the run folder: a cache of another VAE or resolution is refused first
        from .latent_cache import build_latent_cache

        latent_cache = build_latent_cache(args.latent_cache, records, args.train_data_dir, adapter, args.resolution,
                                          accelerator=accelerator, batch_size=args.train_batch_size,
                                          num_workers=args.dataloader_num_workers)

    run_dir = _create_run_dir(accelerator, args, family, continue_run)
    _log_to_file(run_dir, accelerator.is_main_process)
    accelerator.project_configuration.logging_dir = str(run_dir)  # trackers (tensorboard, ...) log into the run
    with _errors_into_log():
        return _fit(accelerator, adapter, args, family, run_dir, resume_from, layout, records, negatives, latent_cache)


def _fit(accelerator, adapter, args, family: str, run_dir: Path, resume_from: Path | None, layout: str, records,
         negatives: NegativePrompts, latent_cache=None) -> Path:
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    rank, world = accelerator.process_index, accelerator.num_processes
    logger.info("experiment %s: %d process(es), mixed precision %s", run_dir, world, accelerator.mixed_precision)
    logger.info("data: %s, %d images (%s); base model %s (%s); u: %s", args.train_data_dir, len(records), layout,
                args.pretrained_model_name_or_path, family, negatives.describe())
    # A family with a huge text encoder (PixArt's T5, --text_embedding_cache) encodes every prompt once here.
    adapter.prepare_text_cache([c for r in records for c in r.captions] + list(args.validation_prompts or []),
                               [""] + negatives.prompts, accelerator)

    method = method_class(args.method)()
    set_seed(args.seed)  # the trained module's initial weights
    model = method.build(adapter, args)
    if args.gradient_checkpointing:
        method.enable_gradient_checkpointing(adapter, model)
    ema = WeightAverage(model, args.ema_decay) if args.ema_decay else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=args.max_train_steps)
    config = method.make_config(
        model, adapter, family=family, base_model=args.pretrained_model_name_or_path, dim=adapter.text_dim,
        num_tokens=adapter.num_tokens, family_options=dict(adapter.options),
        base_model_revision=hub_revision(args.pretrained_model_name_or_path, args.revision),
        base_model_variant=args.variant, negative_prompts=negatives.prompts,
        negative_prompt_prob=negatives.probability,
    )
    logger.info("method %s: %s trainable parameters", args.method, f"{sum(p.numel() for p in model.parameters()):,}")
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)

    options = {k: v for k, v in vars(args).items()}
    options.update(family=family, num_processes=world, mixed_precision=accelerator.mixed_precision,
                   global_batch_size=args.train_batch_size * world * args.gradient_accumulation_steps,
                   data_layout=layout, num_images=len(records), negative_prompt_list=negatives.prompts)
    config.training_options = options

    global_step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        global_step = experiments.checkpoint_step(resume_from)
        if ema is not None:
            ema.restore(method, resume_from, global_step)
        logger.info("resumed from %s at step %d", resume_from, global_step)
    if accelerator.is_main_process:
        name = "training_options.json" if resume_from is None else f"training_options-resume-{global_step}.json"
        (run_dir / name).write_text(json.dumps(options, indent=2, default=str) + "\n")
        _keep_stats_until(run_dir / "stats.jsonl", global_step)
        _regenerate_missing_grids(adapter, method, args, negatives, run_dir)
    accelerator.wait_for_everyone()
    if global_step >= args.max_train_steps:
        logger.info("nothing to do: step %d >= --max_train_steps %d", global_step, args.max_train_steps)
        return run_dir
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("dice", config={k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))})

    accum = args.gradient_accumulation_steps
    loader = iter(make_loader(records, args.resolution, args.train_batch_size, rank, world, args.seed,
                              start_batch=global_step * accum, num_workers=args.dataloader_num_workers,
                              latent_cache=latent_cache))
    negative_bank = NegativeBank(adapter, negatives)

    from tqdm.auto import tqdm

    progress = tqdm(total=args.max_train_steps, initial=global_step, desc="training", disable=not accelerator.is_main_process,
                    mininterval=0.5 if sys.stderr.isatty() else 30)  # keep redirected logs short
    step_log = StepLog(run_dir / "stats.jsonl" if accelerator.is_main_process else None)
    skipped_images = 0
    try:
        while global_step < args.max_train_steps:
            loss_sum, images = 0.0, 0
            for micro in range(accum):
                batch = next(loader)
                skipped_images += batch["skipped"]
                with accelerator.accumulate(model):
                    loss = _micro_step(adapter, method, model, negative_bank, batch, args, global_step, micro, rank, accelerator)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum = loss_sum + loss.detach() / accum  # stays on the device: no wait for the GPU here
                images += len(batch["captions"]) * world
            assert accelerator.sync_gradients, "one update per --gradient_accumulation_steps micro-batches"
            lr_scheduler.step()  # once per update, whatever the number of processes
            if ema is not None:
                ema.update(model)
            global_step += 1
            progress.update(1)
            step_log.add(global_step, loss_sum, lr_scheduler.get_last_lr()[0], images)
            checkpoint_now = global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps
            if global_step % args.log_every == 0 or checkpoint_now:
                logged = step_log.flush()  # the window's one host synchronisation
                for record in logged:
                    accelerator.log({"loss": record["loss"], "lr": record["lr"]}, step=record["step"])
                if logged:
                    last = logged[-1]
                    progress.set_postfix(loss=f"{last['loss']:.4g}")
                    logger.info("step %d/%d loss %.5g lr %.3g %.1f img/s skipped-images %d", global_step,
                                args.max_train_steps, last["loss"], last["lr"], last["images_per_second"], skipped_images)
            if checkpoint_now:
                _check_replicas_identical(accelerator, model)
                sampled = ema.averaged(accelerator.unwrap_model(model)) if ema is not None else accelerator.unwrap_model(model)
                _save_checkpoint(accelerator, run_dir, global_step, method, sampled, config, args.checkpoints_total_limit)
                if accelerator.is_main_process:
                    _validation_grid(adapter, TrainedModel(method, sampled, config), args, negatives, run_dir, global_step)
                accelerator.wait_for_everyone()
    finally:
        progress.close()
        step_log.close()
    if skipped_images:
        logger.warning("%d unreadable image(s) were skipped during training", skipped_images)
    accelerator.end_training()
    logger.info("done: %s", run_dir)
    return run_dir


def _micro_step(adapter, method, model, negative_bank, batch, args, step, micro, rank, accelerator) -> torch.Tensor:
    """One micro-batch: CFG teacher (no gradients) vs the method's student (DICE: the sharpened embedding, unguided)."""
    device, dtype = accelerator.device, adapter.dtype
    batch_size = len(batch["captions"])
    gen = step_generator(args.seed, step, micro, rank)
    # Shared timestep: the same draw on every process (the key leaves the rank out).
    t_gen = step_generator(args.seed, step, micro, -1) if args.shared_timestep else gen
    timesteps = torch.randint(0, adapter.num_train_timesteps, (1 if args.shared_timestep else batch_size,), generator=t_gen)
    # Host tensors go over with to_device: a plain .to("cuda") would make the host wait for the GPU.
    timesteps = to_device(timesteps.expand(batch_size).contiguous(), device)

    if "latents" in batch:  # --latent_cache
        latents = to_device(batch["latents"], device, dtype)
    else:
        latents = adapter.encode_images(batch["pixels"])
    noise = to_device(torch.randn(latents.shape, generator=gen), device, dtype)
    x_t = adapter.add_noise(latents, noise, timesteps)
    sizes = to_device(batch["sizes"], device)
    cond = adapter.encode_prompts(batch["captions"])
    uncond = negative_bank.sample(batch_size, gen)

    guidance = method.training_guidance(args, batch_size, gen)  # w, or one ω per sample (GD, PnP)
    teacher = adapter.teacher_noise(x_t, timesteps, cond, uncond, guidance, sizes)
    with accelerator.autocast():
        student = method.student_noise(model, adapter, x_t, timesteps, cond, uncond, guidance, sizes)
    return distillation_loss(student, teacher, args.loss_type, args.loss_reduction)


def main(family: str, argv: list[str] | None = None) -> Path:
    args = resolve_options(family, build_parser(family).parse_args(argv))
    return train(family, args)
