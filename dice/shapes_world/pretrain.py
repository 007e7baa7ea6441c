"""Pretraining the shapes world: its evaluator, VAE and text-to-image UNet, from nothing, on a CPU.

    python -m dice.shapes_world pretrain --out dice/assets/shapes_world

Stages, each saved before the next starts (a rerun skips finished stages and resumes the UNet from
its last checkpoint, bit for bit): render the world, train the evaluator, train the VAE, encode the
training set, train the UNet (epsilon objective, min-SNR weighting, caption dropout so that CFG
works, EMA), save the pipeline, measure its quality (prompt accuracy unguided and with CFG w=5,
Fréchet distance). Every random draw is keyed by (seed, stage, step). The whole run is ~30 minutes on
2 CPU cores, minutes on a GPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import step_generator
from ..errors import give_default_permissions
from . import evaluator as ev
from . import model as world_model
from .scoring import measure_quality
from .world import TEMPLATES, Combination, render, scenes

logger = logging.getLogger("dice")

PIPELINE_DIR = "shapes-world"  # the folder name is the model name in sample folders and tables
EVALUATOR_DIR = "evaluator"
RECIPE_FILE = "recipe.json"
CHECKSUMS_FILE = "SHA256SUMS"
# Stage keys of the random streams: changing one stage never shifts another's draws.
_EVALUATOR, _VAE, _UNET = 1, 2, 3


@dataclass
class Recipe:
    """Everything that defines the shipped model (recorded in recipe.json beside it)."""

    seed: int = 0
    num_train_images: int = 40_000
    num_validation_images: int = 4_000
    evaluator_steps: int = 1_500
    evaluator_batch_size: int = 128
    evaluator_learning_rate: float = 2e-3
    vae_steps: int = 2_500
    vae_batch_size: int = 32
    vae_learning_rate: float = 2e-3
    vae_kl_weight: float = 1e-4
    unet_steps: int = 3_500
    unet_batch_size: int = 64
    unet_learning_rate: float = 1e-3
    unet_weight_decay: float = 0.01
    unet_warmup_steps: int = 100
    max_grad_norm: float = 1.0
    caption_dropout: float = 0.15  # share of training captions replaced by "": the unconditional model CFG needs
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    train_text_encoder: bool = False  # SD1.5 keeps its (pretrained) CLIP frozen; here it stays at its seeded init
    checkpoint_every: int = 250
    fp16_weights: bool = True  # stored in fp16 (loads as fp32 unless a dtype is asked for)
    quality_prompts: int = 256


def _warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _update(optimizer, loss: torch.Tensor, lr: float, clip_params=None, max_grad_norm: float | None = None) -> None:
    """One optimizer step at learning rate ``lr`` (the stages schedule it themselves, per step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, max_grad_norm)
    optimizer.step()


def render_split(split: str, count: int, seed: int) -> tuple[torch.Tensor, list[Combination]]:
    """uint8 images [N, 3, 32, 32] and their combinations."""
    drawn = scenes(split, count, seed)
    images = np.stack([np.asarray(render(s)) for s in tqdm(drawn, desc=f"rendering {split}", leave=False)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), [s.combination for s in drawn]


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


# ---- evaluator -------------------------------------------------------------------------------------

def train_evaluator(images, combos, val_images, val_combos, recipe: Recipe, progress: bool = True):
    """Cross-entropy on the four attributes, on augmented real renders; returns (model, accuracy)."""
    torch.manual_seed(recipe.seed)
    model = ev.AttributeClassifier()
    labels, val_labels = ev.labels_of(combos), ev.labels_of(val_combos)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.evaluator_learning_rate, weight_decay=1e-4)
    bar = tqdm(range(recipe.evaluator_steps), desc="evaluator", disable=not progress)
    for step in bar:
        gen = step_generator(recipe.seed, _EVALUATOR, step)
        idx = torch.randint(0, len(images), (recipe.evaluator_batch_size,), generator=gen)
        _, logits = model(ev.augment(_pixels(images[idx]), gen))
        loss = sum(F.cross_entropy(logits[a], labels[idx, i]) for i, a in enumerate(ev.ATTRIBUTES))
        _update(optimizer, loss, recipe.evaluator_learning_rate * _warmup_cosine(step, recipe.evaluator_steps, 50))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval().requires_grad_(False)
    _, predicted = ev.predict(model, val_images)
    return model, float((predicted == val_labels).all(dim=1).double().mean())


# ---- VAE -------------------------------------------------------------------------------------------

def train_vae(images: torch.Tensor, recipe: Recipe, progress: bool = True):
    """L1 + MSE reconstruction plus a small KL term (per latent element); returns the VAE with its latent scaling factor set."""
    torch.manual_seed(recipe.seed + _VAE)
    vae = world_model.build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_learning_rate, weight_decay=0.0)
    bar = tqdm(range(recipe.vae_steps), desc="VAE", disable=not progress)
    for step in bar:
        gen = step_generator(recipe.seed, _VAE, step)
        x = _pixels(images[torch.randint(0, len(images), (recipe.vae_batch_size,), generator=gen)])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + recipe.vae_kl_weight * posterior.kl().mean() / z[0].numel()
        _update(optimizer, loss, recipe.vae_learning_rate * _warmup_cosine(step, recipe.vae_steps, 50))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # unit-variance latents, as SD's 0.18215 does for its VAE
        sample = vae.encode(_pixels(images[:2048])).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / sample.std()))
    return vae


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor) -> float:
    x = _pixels(images)
    recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = F.mse_loss((recon + 1) / 2, (x + 1) / 2).item()
    return 10 * math.log10(1.0 / mse)


@torch.no_grad()
def encode_posteriors(vae, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="encoding latents", leave=False):
        posterior = vae.encode(_pixels(images[start:start + batch_size])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


# ---- UNet ------------------------------------------------------------------------------------------

class CaptionTable:
    """Every training caption (and "") tokenised once; a frozen text encoder's outputs cached too."""

    def __init__(self, tokenizer, text_encoder, combos: list[Combination], cache: bool):
        self.captions = [""] + sorted({c.caption(t) for c in set(combos) for t in range(len(TEMPLATES))})
        self.position = {caption: i for i, caption in enumerate(self.captions)}
        self.ids = tokenizer(self.captions, padding="max_length", max_length=tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        self.text_encoder = text_encoder
        self.cached = None
        if cache:
            with torch.no_grad():
                self.cached = torch.cat([text_encoder(self.ids[i:i + 512])[0] for i in range(0, len(self.ids), 512)])

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        return self.cached[rows] if self.cached is not None else self.text_encoder(self.ids[rows])[0]


def _snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr  # min-SNR-gamma for an epsilon-predicting model


def _trainable(unet, text_encoder, recipe: Recipe) -> list[torch.nn.Parameter]:
    return list(unet.parameters()) + (list(text_encoder.parameters()) if recipe.train_text_encoder else [])


def _save_unet_checkpoint(path: Path, step: int, modules: dict, ema, optimizer) -> None:
    """Model, EMA and AdamW state as safetensors + JSON (no pickles), written then renamed."""
    tensors = {f"{name}.{k}": v.contiguous() for name, module in modules.items() for k, v in module.state_dict().items()}
    tensors.update({f"ema.{i}": p.contiguous() for i, p in enumerate(ema.shadow_params)})
    state = optimizer.state_dict()
    for i, slot in state["state"].items():
        tensors.update({f"adam.{i}.{k}": torch.as_tensor(v).contiguous() for k, v in slot.items()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "ema_step": ema.optimization_step,
                                                "param_groups": state["param_groups"]}))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _load_unet_checkpoint(path: Path, modules: dict, ema, optimizer) -> int:
    tensors = load_file(str(path / "state.safetensors"))
    meta = json.loads((path / "state.json").read_text())
    for name, module in modules.items():
        module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    ema.shadow_params = [tensors[f"ema.{i}"] for i in range(len(ema.shadow_params))]
    ema.optimization_step = meta["ema_step"]
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    return meta["step"]


def train_unet(unet, text_encoder, tokenizer, scheduler, means, stds, combos, scaling_factor: float,
               recipe: Recipe, checkpoint_dir: Path | None = None, time_budget_s: float | None = None,
               progress: bool = True, on_step=None):
    """The text-to-image objective with caption dropout; returns (EMA model, steps done).

    ``on_step(step, loss)`` is called after every update (tests record the loss curve through it).
    """
    from diffusers.training_utils import EMAModel

    text_encoder.requires_grad_(recipe.train_text_encoder)
    table = CaptionTable(tokenizer, text_encoder, combos, cache=not recipe.train_text_encoder)
    caption_rows = torch.tensor([[table.position[c.caption(t)] for t in range(len(TEMPLATES))] for c in combos])
    params = _trainable(unet, text_encoder, recipe)
    optimizer = torch.optim.AdamW(params, lr=recipe.unet_learning_rate, weight_decay=recipe.unet_weight_decay)
    ema = EMAModel(params, decay=recipe.ema_decay)
    modules = {"unet": unet, **({"text_encoder": text_encoder} if recipe.train_text_encoder else {})}
    start = 0
    if checkpoint_dir is not None and (checkpoint_dir / "state.json").is_file():
        start = _load_unet_checkpoint(checkpoint_dir, modules, ema, optimizer)
        logger.info("resumed UNet training at step %d from %s", start, checkpoint_dir)
    unet.train()
    began = time.time()
    bar = tqdm(range(start, recipe.unet_steps), initial=start, total=recipe.unet_steps, desc="UNet", disable=not progress)
    done = start
    for step in bar:
        gen = step_generator(recipe.seed, _UNET, step)
        b = recipe.unet_batch_size
        idx = torch.randint(0, len(means), (b,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen)
        rows = caption_rows[idx, torch.randint(0, len(TEMPLATES), (b,), generator=gen)]
        rows = torch.where(torch.rand(b, generator=gen) < recipe.caption_dropout, torch.zeros_like(rows), rows)
        prediction = unet(scheduler.add_noise(latents, noise, t), t, table.embed(rows)).sample
        per_sample = (prediction - noise).square().mean(dim=(1, 2, 3))
        loss = (per_sample * _snr_weights(scheduler, t, recipe.min_snr_gamma)).mean()
        _update(optimizer, loss, recipe.unet_learning_rate * _warmup_cosine(step, recipe.unet_steps, recipe.unet_warmup_steps),
                params, recipe.max_grad_norm)
        ema.step(params)
        if on_step is not None:
            on_step(step, loss.item())
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if checkpoint_dir is not None and (done % recipe.checkpoint_every == 0 or done == recipe.unet_steps):
            _save_unet_checkpoint(checkpoint_dir, done, modules, ema, optimizer)
        if time_budget_s is not None and time.time() - began > time_budget_s and done < recipe.unet_steps:
            logger.warning("time budget reached after %d of %d UNet steps: the model is NOT the recipe's", done, recipe.unet_steps)
            break
    bar.close()
    ema.copy_to(params)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return done


# ---- the whole recipe ------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(root: Path) -> Path:
    """SHA256SUMS of every weights file under ``root`` (``sha256sum -c`` format)."""
    files = sorted(p for p in root.rglob("*.safetensors") if ".work" not in p.parts)
    lines = [f"{sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in files]
    (root / CHECKSUMS_FILE).write_text("".join(lines))
    return root / CHECKSUMS_FILE


def pretrain(out: str | Path, recipe: Recipe | None = None, time_budget_minutes: float | None = None,
             progress: bool = True) -> dict:
    """Run (or resume) the whole recipe into ``out``: shapes-world/ (the pipeline), evaluator/, recipe.json, SHA256SUMS."""
    recipe = recipe or Recipe()
    out = Path(out)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    # Wall time per stage, summed over every invocation of an interrupted-and-resumed run.
    timings_file = work / "seconds.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    started: dict[str, float] = {}
    report: dict = {"recipe": dataclasses.asdict(recipe)}

    def stage(name):
        started[name] = time.time()

    def done(name):
        elapsed = time.time() - started[name]
        timings[name] = round(timings.get(name, 0.0) + elapsed, 1)
        timings_file.write_text(json.dumps(timings))
        logger.info("%s: %.0f s", name, elapsed)

    stage("render")
    train_images, train_combos = render_split("train", recipe.num_train_images, recipe.seed)
    val_images, val_combos = render_split("validation", recipe.num_validation_images, recipe.seed)
    done("render")

    stage("evaluator")
    if not (work / EVALUATOR_DIR / ev.WEIGHTS_NAME).is_file():
        classifier, accuracy = train_evaluator(train_images, train_combos, val_images, val_combos, recipe, progress)
        ev.save_evaluator(work / EVALUATOR_DIR, classifier, {"validation_accuracy": accuracy,
                                                             "validation_images": recipe.num_validation_images})
    classifier = ev.load_evaluator(work / EVALUATOR_DIR)
    report["evaluator_validation_accuracy"] = json.loads((work / EVALUATOR_DIR / ev.CONFIG_NAME).read_text())["validation_accuracy"]
    done("evaluator")

    stage("vae")
    from diffusers import AutoencoderKL

    if not (work / "vae" / "config.json").is_file():
        train_vae(train_images, recipe, progress).save_pretrained(work / "vae")
    vae = AutoencoderKL.from_pretrained(work / "vae").eval().requires_grad_(False)
    report["vae_psnr_db"] = round(reconstruction_psnr(vae, val_images[:1024]), 2)
    with torch.no_grad():
        recon = vae.decode(vae.encode(_pixels(val_images[:1024])).latent_dist.mode()).sample
    _, predicted = ev.predict(classifier, ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    report["evaluator_accuracy_on_vae_reconstructions"] = float((predicted == ev.labels_of(val_combos[:1024])).all(dim=1).double().mean())
    done("vae")

    stage("latents")
    means, stds = encode_posteriors(vae, train_images)
    done("latents")

    stage("unet")
    torch.manual_seed(recipe.seed + _UNET)
    tokenizer = world_model.build_tokenizer(work / "tokenizer-files")
    text_encoder = world_model.build_text_encoder(tokenizer)
    unet = world_model.build_unet()
    scheduler = world_model.build_scheduler()
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(scheduler.config)
    steps_done = train_unet(unet, text_encoder, tokenizer, noise_schedule, means, stds, train_combos,
                            vae.config.scaling_factor, recipe, work / "unet-checkpoint",
                            None if time_budget_minutes is None else 60 * time_budget_minutes, progress)
    report["unet_steps_done"] = steps_done
    done("unet")

    stage("save")
    pipe = world_model.assemble_pipeline(vae, text_encoder, tokenizer, unet)
    if recipe.fp16_weights:
        pipe.unet.half()
    target = out / PIPELINE_DIR
    if target.exists():
        shutil.rmtree(target)
    pipe.save_pretrained(target, safe_serialization=True)
    if (out / EVALUATOR_DIR).exists():
        shutil.rmtree(out / EVALUATOR_DIR)
    shutil.copytree(work / EVALUATOR_DIR, out / EVALUATOR_DIR)
    done("save")

    stage("quality")
    report["quality"] = measure_quality(out / PIPELINE_DIR, out / EVALUATOR_DIR, recipe.quality_prompts)
    done("quality")

    report["seconds"] = timings
    report["threads"] = torch.get_num_threads()
    report["parameters"] = {name: sum(p.numel() for p in module.parameters())
                            for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("evaluator", classifier))}
    (out / RECIPE_FILE).write_text(json.dumps(report, indent=2) + "\n")
    give_default_permissions(*out.rglob("*.safetensors"))  # safetensors writes 0600; ship them like every other file
    write_checksums(out)
    if steps_done == recipe.unet_steps:
        shutil.rmtree(work)  # finished: the stage outputs live in pipeline/ and evaluator/
    return report
