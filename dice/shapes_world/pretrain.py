"""Pretraining the shapes world: its evaluator, VAE and text-to-image denoiser, from nothing, on a CPU.

    python -m dice.shapes_world pretrain --out dice/assets/shapes_world                 # the epsilon world
    python -m dice.shapes_world pretrain --family flow --out dice/assets/shapes_world   # its flow-matching twin

Stages, each saved before the next starts (a rerun skips finished stages and resumes the denoiser from
its last checkpoint, bit for bit): render the world, train the evaluator, train the VAE, encode the
training set, train the UNet (epsilon objective, min-SNR weighting, caption dropout so that CFG
works, EMA), save the pipeline, measure its quality (prompt accuracy unguided and with CFG w=5,
Fréchet distance). Every random draw is keyed by (seed, stage, step). The whole run is ~30 minutes on
2 CPU cores, minutes on a GPU.

The flow family (:class:`FlowRecipe`) reuses the epsilon world's VAE, frozen text encoder and evaluator
and trains only an ``SD3Transformer2DModel`` with the rectified-flow objective (``x_t = (1 - σ) x_0 + σ ε``,
target ``ε - x_0``, timestep ``1000 σ``, σ logit-normal as in SD3) in the same loop, with the same
seeding, checkpoints, time box and checksums; it ships as a ``StableDiffusion3Pipeline`` folder.
"""
from __future__ import annotations

import contextlib
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
from ..errors import UserError, give_default_permissions
from . import evaluator as ev
from . import model as world_model
from .scoring import ASSETS, measure_quality
from .world import TEMPLATES, Combination, render, scenes

logger = logging.getLogger("dice")

PIPELINE_DIR = "shapes-world"  # the folder name is the model name in sample folders and tables
FLOW_PIPELINE_DIR = "shapes-world-flow"
EVALUATOR_DIR = "evaluator"
RECIPE_FILE = "recipe.json"
FLOW_RECIPE_FILE = "recipe-flow.json"
CHECKSUMS_FILE = "SHA256SUMS"
# Stage keys of the random streams: changing one stage never shifts another's draws.
_EVALUATOR, _VAE, _UNET, _TRANSFORMER = 1, 2, 3, 4


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

    def denoiser_loop(self) -> DenoiserLoop:
        return DenoiserLoop(self.seed, _UNET, self.unet_steps, self.unet_batch_size, self.unet_learning_rate,
                            self.unet_weight_decay, self.unet_warmup_steps, self.max_grad_norm, self.caption_dropout,
                            self.ema_decay, self.checkpoint_every)


@dataclass
class FlowRecipe:
    """The flow-matching model (recorded in recipe-flow.json beside it). The VAE, text encoder and
    evaluator are the epsilon world's; only the transformer is trained."""

    seed: int = 0
    num_train_images: int = 40_000  # the epsilon world's training images (same seed: the same renders)
    transformer_steps: int = 3_000
    transformer_batch_size: int = 64
    transformer_learning_rate: float = 1e-3
    transformer_weight_decay: float = 0.01
    transformer_warmup_steps: int = 200
    max_grad_norm: float = 1.0
    caption_dropout: float = 0.15  # share of captions replaced by "": the unconditional model CFG needs
    # σ = shift(sigmoid(n)), n ~ N(logit_mean, logit_std): SD3's logit-normal draw (its best, rf/lognorm(0.00, 1.00)),
    # then the scheduler's shift, as diffusers' SD3 training examples do.
    logit_mean: float = dataclasses.field(default=0.0, metadata={"signed": True})
    logit_std: float = 1.0
    shift: float = world_model.FLOW_SHIFT
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    fp16_weights: bool = True
    quality_prompts: int = 256

    def denoiser_loop(self) -> DenoiserLoop:
        return DenoiserLoop(self.seed, _TRANSFORMER, self.transformer_steps, self.transformer_batch_size,
                            self.transformer_learning_rate, self.transformer_weight_decay, self.transformer_warmup_steps,
                            self.max_grad_norm, self.caption_dropout, self.ema_decay, self.checkpoint_every)


RECIPES = {"eps": Recipe, "flow": FlowRecipe}  # --family -> its recipe


@dataclass(frozen=True)
class DenoiserLoop:
    """What the one denoiser training loop takes from a family's recipe."""

    seed: int
    stream: int  # the stage key of its random draws
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    max_grad_norm: float
    caption_dropout: float
    ema_decay: float
    checkpoint_every: int


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


# ---- the denoiser: one loop, a UNet (epsilon) or a transformer (flow) -----------------------------

def _captions(combos: list[Combination]) -> list[str]:
    """"" (the dropped caption, row 0) and every training caption, in a fixed order."""
    return [""] + sorted({c.caption(t) for c in set(combos) for t in range(len(TEMPLATES))})


class CaptionTable:
    """Every training caption (and "") tokenised once; a frozen text encoder's outputs cached too."""

    def __init__(self, tokenizer, text_encoder, combos: list[Combination], cache: bool):
        self.captions = _captions(combos)
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


class FlowCaptionTable:
    """Every training caption (and "") encoded once by the stock pipeline's own ``encode_prompt``: the
    conditioning the transformer trains on is, row for row, what the pipeline feeds it at sampling
    (a dropped caption is exactly its empty negative prompt)."""

    def __init__(self, pipe, combos: list[Combination]):
        self.captions = _captions(combos)
        self.position = {caption: i for i, caption in enumerate(self.captions)}
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(self.captions, None, None, device="cpu", do_classifier_free_guidance=False,
                                                      max_sequence_length=world_model.FLOW_T5_TOKENS)
        self.embeds, self.pooled = embeds, pooled

    def embed(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embeds[rows], self.pooled[rows]


def _snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr  # min-SNR-gamma for an epsilon-predicting model


class EpsilonObjective:
    """DDPM noising at a uniform integer timestep; the UNet predicts the noise; min-SNR-gamma weights."""

    def __init__(self, unet, scheduler, min_snr_gamma: float):
        self.unet, self.scheduler, self.gamma = unet, scheduler, min_snr_gamma

    def noise(self, latents: torch.Tensor, gen: torch.Generator):
        """(noisy latents, timesteps, target, per-sample loss weights)."""
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
        return self.scheduler.add_noise(latents, noise, t), t, noise, _snr_weights(self.scheduler, t, self.gamma)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning) -> torch.Tensor:
        return self.unet(noisy, timesteps, conditioning).sample


class FlowObjective:
    """Rectified flow as SD3 trains it: x_t = (1 - σ) x_0 + σ ε, the transformer predicts the velocity
    ε - x_0 at timestep 1000 σ (continuous), σ = shift(sigmoid(n)) with n ~ N(logit_mean, logit_std);
    unweighted squared error (the logit-normal draw is the weighting)."""

    def __init__(self, transformer, recipe: FlowRecipe):
        self.transformer, self.recipe = transformer, recipe

    def sigmas(self, count: int, gen: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling("logit_normal", count, self.recipe.logit_mean, self.recipe.logit_std, generator=gen)
        shift = self.recipe.shift
        return shift * u / (1 + (shift - 1) * u)  # FlowMatchEulerDiscreteScheduler's static shift

    def noise(self, latents: torch.Tensor, gen: torch.Generator):
        noise = torch.randn(latents.shape, generator=gen)
        sigma = self.sigmas(len(latents), gen)
        s = sigma.view(-1, 1, 1, 1)
        return (1 - s) * latents + s * noise, 1000 * sigma, noise - latents, None

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning) -> torch.Tensor:
        embeds, pooled = conditioning
        return self.transformer(hidden_states=noisy, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=timesteps).sample


def _save_checkpoint(path: Path, step: int, modules: dict, ema, optimizer) -> None:
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


def _load_checkpoint(path: Path, modules: dict, ema, optimizer) -> int:
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


def train_denoiser(name: str, modules: dict, params: list, objective, table, means, stds, combos, scaling_factor: float,
                   loop: DenoiserLoop, checkpoint_dir: Path | None = None, time_budget_s: float | None = None,
                   progress: bool = True, on_step=None) -> int:
    """The text-to-image objective with caption dropout, AdamW (warm-up + cosine), clipping and EMA; returns
    the steps done, the EMA weights copied into ``params``. ``modules`` (name -> module) are checkpointed,
    the first is the denoiser. ``on_step(step, loss)`` is called after every update (tests record the loss
    curve through it)."""
    from diffusers.training_utils import EMAModel

    caption_rows = torch.tensor([[table.position[c.caption(t)] for t in range(len(TEMPLATES))] for c in combos])
    optimizer = torch.optim.AdamW(params, lr=loop.learning_rate, weight_decay=loop.weight_decay)
    ema = EMAModel(params, decay=loop.ema_decay)
    start = 0
    if checkpoint_dir is not None and (checkpoint_dir / "state.json").is_file():
        start = _load_checkpoint(checkpoint_dir, modules, ema, optimizer)
        logger.info("resumed %s training at step %d from %s", name, start, checkpoint_dir)
    next(iter(modules.values())).train()
    began = time.time()
    bar = tqdm(range(start, loop.steps), initial=start, total=loop.steps, desc=name, disable=not progress)
    done = start
    for step in bar:
        gen = step_generator(loop.seed, loop.stream, step)
        b = loop.batch_size
        idx = torch.randint(0, len(means), (b,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling_factor
        noisy, timesteps, target, weights = objective.noise(latents, gen)
        rows = caption_rows[idx, torch.randint(0, len(TEMPLATES), (b,), generator=gen)]
        rows = torch.where(torch.rand(b, generator=gen) < loop.caption_dropout, torch.zeros_like(rows), rows)
        prediction = objective.predict(noisy, timesteps, table.embed(rows))
        per_sample = (prediction - target).square().mean(dim=(1, 2, 3))
        loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
        _update(optimizer, loss, loop.learning_rate * _warmup_cosine(step, loop.steps, loop.warmup_steps), params,
                loop.max_grad_norm)
        ema.step(params)
        if on_step is not None:
            on_step(step, loss.item())
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if checkpoint_dir is not None and (done % loop.checkpoint_every == 0 or done == loop.steps):
            _save_checkpoint(checkpoint_dir, done, modules, ema, optimizer)
        if time_budget_s is not None and time.time() - began > time_budget_s and done < loop.steps:
            logger.warning("time budget reached after %d of %d %s steps: the model is NOT the recipe's", done, loop.steps, name)
            break
    bar.close()
    ema.copy_to(params)
    for module in modules.values():
        module.eval().requires_grad_(False)
    return done


def train_unet(unet, text_encoder, tokenizer, scheduler, means, stds, combos, scaling_factor: float,
               recipe: Recipe, checkpoint_dir: Path | None = None, time_budget_s: float | None = None,
               progress: bool = True, on_step=None) -> int:
    """The epsilon world's UNet (and its text encoder if the recipe trains it); returns the steps done."""
    text_encoder.requires_grad_(recipe.train_text_encoder)
    table = CaptionTable(tokenizer, text_encoder, combos, cache=not recipe.train_text_encoder)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if recipe.train_text_encoder else [])
    modules = {"unet": unet, **({"text_encoder": text_encoder} if recipe.train_text_encoder else {})}
    done = train_denoiser("UNet", modules, params, EpsilonObjective(unet, scheduler, recipe.min_snr_gamma), table,
                          means, stds, combos, scaling_factor, recipe.denoiser_loop(), checkpoint_dir, time_budget_s,
                          progress, on_step)
    text_encoder.eval().requires_grad_(False)
    return done


def train_transformer(pipe, means, stds, combos, scaling_factor: float, recipe: FlowRecipe,
                      checkpoint_dir: Path | None = None, time_budget_s: float | None = None,
                      progress: bool = True, on_step=None) -> int:
    """The flow world's transformer, inside its assembled ``StableDiffusion3Pipeline``; returns the steps done."""
    transformer = pipe.transformer
    return train_denoiser("transformer", {"transformer": transformer}, list(transformer.parameters()),
                          FlowObjective(transformer, recipe), FlowCaptionTable(pipe, combos), means, stds, combos,
                          scaling_factor, recipe.denoiser_loop(), checkpoint_dir, time_budget_s, progress, on_step)


# ---- the whole recipe ------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(root: Path) -> Path:
    """SHA256SUMS of every weights file under ``root`` (``sha256sum -c`` format)."""
    files = sorted(p for p in root.rglob("*.safetensors") if not any(part.startswith(".work") for part in p.relative_to(root).parts))
    lines = [f"{sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in files]
    (root / CHECKSUMS_FILE).write_text("".join(lines))
    return root / CHECKSUMS_FILE


class _StageClock:
    """Wall time per stage, summed over every invocation of an interrupted-and-resumed run (``file``)."""

    def __init__(self, file: Path):
        self.file = file
        self.seconds: dict[str, float] = json.loads(file.read_text()) if file.is_file() else {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        started = time.time()
        yield
        elapsed = time.time() - started
        self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 1)
        self.file.write_text(json.dumps(self.seconds))
        logger.info("%s: %.0f s", name, elapsed)


def _finish(out: Path, work: Path, report_file: str, report: dict, clock: _StageClock, modules: dict, complete: bool) -> dict:
    report["seconds"] = clock.seconds
    report["threads"] = torch.get_num_threads()
    report["parameters"] = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    (out / report_file).write_text(json.dumps(report, indent=2) + "\n")
    give_default_permissions(*out.rglob("*.safetensors"))  # safetensors writes 0600; ship them like every other file
    write_checksums(out)
    if complete:
        shutil.rmtree(work)  # finished: the stage outputs live in the pipeline and evaluator folders
    return report


def pretrain(out: str | Path, recipe: Recipe | FlowRecipe | None = None, time_budget_minutes: float | None = None,
             progress: bool = True, world: str | Path = ASSETS) -> dict:
    """Run (or resume) a whole recipe into ``out``. The epsilon world (:class:`Recipe`) writes shapes-world/ (the
    pipeline), evaluator/, recipe.json and SHA256SUMS; the flow world (:class:`FlowRecipe`) writes
    shapes-world-flow/ and recipe-flow.json and refreshes SHA256SUMS, reusing the epsilon world in ``world``."""
    recipe = recipe or Recipe()
    if isinstance(recipe, FlowRecipe):
        return _pretrain_flow(Path(out), recipe, time_budget_minutes, progress, Path(world))
    out = Path(out)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    clock = _StageClock(work / "seconds.json")
    report: dict = {"recipe": dataclasses.asdict(recipe)}

    with clock("render"):
        train_images, train_combos = render_split("train", recipe.num_train_images, recipe.seed)
        val_images, val_combos = render_split("validation", recipe.num_validation_images, recipe.seed)

    with clock("evaluator"):
        if not (work / EVALUATOR_DIR / ev.WEIGHTS_NAME).is_file():
            classifier, accuracy = train_evaluator(train_images, train_combos, val_images, val_combos, recipe, progress)
            ev.save_evaluator(work / EVALUATOR_DIR, classifier, {"validation_accuracy": accuracy,
                                                                 "validation_images": recipe.num_validation_images})
        classifier = ev.load_evaluator(work / EVALUATOR_DIR)
        report["evaluator_validation_accuracy"] = json.loads((work / EVALUATOR_DIR / ev.CONFIG_NAME).read_text())["validation_accuracy"]

    with clock("vae"):
        from diffusers import AutoencoderKL

        if not (work / "vae" / "config.json").is_file():
            train_vae(train_images, recipe, progress).save_pretrained(work / "vae")
        vae = AutoencoderKL.from_pretrained(work / "vae").eval().requires_grad_(False)
        report["vae_psnr_db"] = round(reconstruction_psnr(vae, val_images[:1024]), 2)
        with torch.no_grad():
            recon = vae.decode(vae.encode(_pixels(val_images[:1024])).latent_dist.mode()).sample
        _, predicted = ev.predict(classifier, ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
        report["evaluator_accuracy_on_vae_reconstructions"] = float((predicted == ev.labels_of(val_combos[:1024])).all(dim=1).double().mean())

    with clock("latents"):
        means, stds = encode_posteriors(vae, train_images)

    with clock("unet"):
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

    with clock("save"):
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

    with clock("quality"):
        report["quality"] = measure_quality(out / PIPELINE_DIR, out / EVALUATOR_DIR, recipe.quality_prompts)

    return _finish(out, work, RECIPE_FILE, report, clock,
                   {"unet": unet, "vae": vae, "text_encoder": text_encoder, "evaluator": classifier},
                   steps_done == recipe.unet_steps)


def load_world(world: Path):
    """The epsilon world's pipeline (its VAE, text encoder and tokenizer), or one line saying what is missing."""
    from diffusers import StableDiffusionPipeline

    if not (world / PIPELINE_DIR / "model_index.json").is_file() or not (world / EVALUATOR_DIR / ev.WEIGHTS_NAME).is_file():
        raise UserError(f"--world '{world}' holds no shapes world ({PIPELINE_DIR}/ and {EVALUATOR_DIR}/). Pass the folder "
                        "`python -m dice.shapes_world pretrain --out` wrote, or leave --world out for the shipped one")
    return StableDiffusionPipeline.from_pretrained(world / PIPELINE_DIR)


def _pretrain_flow(out: Path, recipe: FlowRecipe, time_budget_minutes: float | None, progress: bool, world: Path) -> dict:
    eps_pipe = load_world(world)
    work = out / ".work-flow"
    work.mkdir(parents=True, exist_ok=True)
    clock = _StageClock(work / "seconds.json")
    reused = [world / PIPELINE_DIR / "vae" / "diffusion_pytorch_model.safetensors",
              world / PIPELINE_DIR / "text_encoder" / "model.safetensors", world / EVALUATOR_DIR / ev.WEIGHTS_NAME]
    report: dict = {"recipe": dataclasses.asdict(recipe), "max_sequence_length": world_model.FLOW_T5_TOKENS,
                    "clip_tokens": world_model.FLOW_CLIP_TOKENS,
                    "reused_sha256": {p.relative_to(world).as_posix(): sha256(p) for p in reused if p.is_file()}}
    vae = eps_pipe.vae.eval().requires_grad_(False)

    with clock("render"):
        train_images, train_combos = render_split("train", recipe.num_train_images, recipe.seed)

    with clock("latents"):
        means, stds = encode_posteriors(vae, train_images)

    with clock("transformer"):
        torch.manual_seed(recipe.seed + _TRANSFORMER)
        pipe = world_model.assemble_flow_pipeline(vae, eps_pipe.text_encoder, eps_pipe.tokenizer,
                                                  world_model.build_transformer(), recipe.shift)
        steps_done = train_transformer(pipe, means, stds, train_combos, vae.config.scaling_factor, recipe,
                                       work / "transformer-checkpoint",
                                       None if time_budget_minutes is None else 60 * time_budget_minutes, progress)
        report["transformer_steps_done"] = steps_done

    with clock("save"):
        if recipe.fp16_weights:
            pipe.transformer.half()
        target = out / FLOW_PIPELINE_DIR
        if target.exists():
            shutil.rmtree(target)
        pipe.save_pretrained(target, safe_serialization=True)

    with clock("quality"):
        report["quality"] = measure_quality(target, world / EVALUATOR_DIR, recipe.quality_prompts)

    return _finish(out, work, FLOW_RECIPE_FILE, report, clock,
                   {"transformer": pipe.transformer, "vae": vae, "text_encoder": pipe.text_encoder},
                   steps_done == recipe.transformer_steps)
