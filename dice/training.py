"""The only training loop: fit a student to a frozen model's CFG predictions under accelerate.

Entry points (train_sd15.py, ...) call :func:`main` with their family; ``--method`` picks what is trained
(DICE's sharpener by default, GD's fine-tuned denoiser, PnP's guide network). One update is
:func:`dice.distillation.distillation_step` per micro-batch; everything per-family goes through the adapter,
everything per-method through the method (dice.methods), every option through dice.options. Everything random
is keyed by (seed, step, micro-step, rank), so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import logging.handlers
import os
import shutil
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import experiments
from .adapters import Conditioning, adapter_class
from .adapters.base import hub_revision
from .adapters.registry import entry_script
from .checkpoint import checkpoint_config, read_config
from .data import load_records, make_loader, step_generator
from .distillation import distillation_step
from .errors import UserError, check_output_dir, give_default_permissions, is_disk_full, one_line
from .latent_cache import build_latent_cache
from .methods import TrainedModel, build_method
from .negatives import NegativePrompts, read_negative_prompts
from .options import DENOISER_AUTOCAST, build_parser, resolve_options
from .paper import GUIDANCE_SCALE
from .runtime import needs_cpu_process_group, to_device
from .sampling import generate, image_grid, use_scheduler, write_atomic
from .step_log import StepLog

logger = logging.getLogger("dice")


def main(family: str, argv: list[str] | None = None) -> Path:
    args = resolve_options(family, build_parser(family).parse_args(argv))
    return train(family, args)


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
        latent_cache = build_latent_cache(args.latent_cache, records, args.train_data_dir, adapter, args.resolution,
                                          accelerator=accelerator, batch_size=args.train_batch_size,
                                          num_workers=args.dataloader_num_workers)

    run_dir = _create_run_dir(accelerator, args, family, continue_run)
    _log_to_file(run_dir, accelerator.is_main_process)
    accelerator.project_configuration.logging_dir = str(run_dir)  # trackers (tensorboard, ...) log into the run
    with _errors_into_log():
        return fit(accelerator, adapter, args, family, run_dir, resume_from, layout, records, negatives, latent_cache)


def fit(accelerator, adapter, args, family: str, run_dir: Path, resume_from: Path | None, layout: str, records,
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

    method = build_method(args.method, guidance_scale=args.guidance_scale, guidance_scale_range=args.guidance_scale_range,
                          omega_draw=args.omega_draw, omega_student_input=args.omega_student_input,
                          inner_dim=args.sharpener_inner_dim, num_heads=args.sharpener_heads,
                          project_u_once=args.project_u_once)
    set_seed(args.seed)  # the trained module's initial weights
    model = method.build(adapter)
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
    if ema is None:
        _store_trained_weights_once(accelerator, method)

    options = {k: v for k, v in vars(args).items()}
    options.update(family=family, num_processes=world, mixed_precision=accelerator.mixed_precision,
                   global_batch_size=args.train_batch_size * world * args.gradient_accumulation_steps,
                   data_layout=layout, num_images=len(records), negative_prompt_list=negatives.prompts,
                   # What changes pixels beyond the options above: the stock pipeline's output filters switched off
                   # (validation grids), the empty prompt's u of the teacher and the student.
                   output_filters_off=adapter.removed_output_filters, null_embedding=adapter.null_embedding() or "encoded")
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
                # Every random draw is keyed by (seed, step, micro-step, rank); a shared timestep leaves the rank out.
                generator = step_generator(args.seed, global_step, micro, rank)
                shared = step_generator(args.seed, global_step, micro, -1)
                latents = (to_device(batch["latents"], accelerator.device, adapter.dtype) if "latents" in batch  # --latent_cache
                           else adapter.encode_images(batch["pixels"]))
                with accelerator.accumulate(model):
                    loss = distillation_step(adapter, method, model, latents, batch["captions"],
                                             to_device(batch["sizes"], accelerator.device), negative_bank, generator,
                                             shared_generator=shared, shared_timestep=bool(args.shared_timestep),
                                             loss_type=args.loss_type, reduction=args.loss_reduction,
                                             global_batch=options["global_batch_size"], autocast=accelerator.autocast)
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


# ---- what the loop uses ------------------------------------------------------------------------------

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
        script = entry_script(saved.family)
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
    adapter.denoiser_autocast = DENOISER_AUTOCAST.get(args.denoiser_autocast)
    if args.enable_xformers_memory_efficient_attention:
        adapter.enable_xformers()
    if args.channels_last:
        adapter.denoiser.to(memory_format=torch.channels_last)
    if args.compile:
        adapter.compile_denoiser(args.compile)
    return adapter


def _store_trained_weights_once(accelerator, method) -> None:
    """Without a moving average the weights sampling uses are the trained weights: the method's own files
    (safetensors) hold them, and accelerate's state does not store them a second time (no model.safetensors);
    resuming reads them back from the method's files."""

    def skip_saving(models, weights, output_dir):
        weights.clear()

    def load_from_method_files(models, input_dir):
        checkpoint = Path(input_dir)
        for model in models:
            trained = accelerator.unwrap_model(model)
            saved = method.load(checkpoint, read_config(checkpoint_config(checkpoint)), device="cpu", dtype=torch.float32)
            trained.load_state_dict(saved.state_dict())
        models.clear()

    accelerator.register_save_state_pre_hook(skip_saving)
    accelerator.register_load_state_pre_hook(load_from_method_files)


def _save_checkpoint(accelerator, run_dir: Path, step: int, method, sampled, config, limit) -> Path:
    """Write into a hidden temporary folder, then rename: a crash never leaves a half checkpoint.

    A checkpoint is the method's own files, safetensors + JSON, holding ``sampled``: the weights sampling and
    export use (the moving average with --ema_decay, else the trained weights). Beside them, for resuming
    one's own run only, accelerate's state: the optimizer's moments (``optimizer.bin``), the lr schedule
    (``scheduler.bin``) and every RNG state (``random_states_<rank>.pkl``), which are **pickles**
    (torch.save), and with --ema_decay the raw trained weights (``model.safetensors``). Sampling, export and
    ``dice.apply`` never open the pickles."""
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
    if not args.validation_prompts:
        return
    use_scheduler(adapter)  # the family's sampler: the paper's DPM-Solver++ for epsilon models
    prompts = list(args.validation_prompts)
    seeds = list(range(len(prompts)))  # fixed seeds: grids of different steps are comparable
    # u as in training (and as sample.py draws it), for the CFG teacher and DICE alike.
    common = dict(steps=args.validation_inference_steps, resolution=args.resolution,
                  negative_prompt=[negatives.for_image(s) for s in seeds])
    # GD and PnP trained over a range of scales: shown at the scale they are sampled at.
    w = args.guidance_scale or GUIDANCE_SCALE
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
    def logged_step(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            return float("inf")

    lines = stats_path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if logged_step(line) <= step]
    if len(kept) != len(lines):
        write_atomic(stats_path, lambda tmp: tmp.write_text("".join(kept)))


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
