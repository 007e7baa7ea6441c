"""The one interface every model family implements.

An adapter wraps a *stock* diffusers pipeline and knows the per-family facts: how prompts become
the embedding sequence the sharpener rewrites, what the null/negative embedding is, how the denoiser
is called, and which keyword arguments hand (sharpened) embeddings back to the pipeline. The training
loop and the sampling routine talk to adapters only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from ..runtime import to_device
from .registry import (
    ModelLoadError,
    entry_script,
    family_of_pipeline_class,
    family_of_single_file,
    is_offline,
    looks_like_file,
    read_model_index,
)

logger = logging.getLogger("dice")


COMPILE_CHOICES = ("full", "regional")


@dataclasses.dataclass
class Conditioning:
    """The text side of one denoiser call, batched.

    ``embeds`` [B, T, D] is the sequence the sharpener reads and rewrites. ``pooled`` (SDXL) and
    ``mask`` (PixArt's T5 attention mask) travel alongside unchanged.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def _map(self, fn) -> "Conditioning":
        return Conditioning(*(None if x is None else fn(x) for x in (self.embeds, self.pooled, self.mask)))

    def to(self, device=None, dtype=None) -> "Conditioning":
        # The mask stays integer: only floating tensors take the dtype.
        return self._map(lambda x: x.to(device=device, dtype=dtype if x.is_floating_point() else None))

    def to_device(self, device) -> "Conditioning":
        """Host to ``device`` without making the host wait for the GPU (see :func:`dice.runtime.to_device`)."""
        return self._map(lambda x: to_device(x, device))

    def select(self, index) -> "Conditioning":
        return self._map(lambda x: x[index])

    def replace(self, **changes) -> "Conditioning":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        first = items[0]
        fields = [[getattr(c, f.name) for c in items] for f in dataclasses.fields(first)]
        return Conditioning(*(None if xs[0] is None else torch.cat(xs) for xs in fields))

    def __len__(self) -> int:
        return self.embeds.shape[0]


def absolute_if_local(name_or_path: str) -> str:
    """A local file or folder as an absolute path (found again from any directory); a hub id unchanged."""
    return os.path.abspath(name_or_path) if os.path.exists(name_or_path) else name_or_path


def _model_index_or_none(model: str, revision: str | None) -> dict | None:
    try:
        return read_model_index(model, revision)
    except ModelLoadError:
        return None


def hub_revision(model: str, revision: str | None = None) -> str | None:
    """The commit a hub id resolves to in the local Hugging Face cache (what from_pretrained loaded),
    else ``revision``; None for a local model."""
    if os.path.exists(model):
        return None
    try:
        cached = try_to_load_from_cache(model, "model_index.json", revision=revision)
    except Exception:  # noqa: BLE001 - not a valid hub id: nothing to record beyond what was given
        return revision
    parts = Path(cached).parts if isinstance(cached, str) else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else revision


class Adapter:
    """Base class: generic logic; subclasses fill in the per-family facts."""

    family: ClassVar[str]
    pipeline_class_name: ClassVar[str]
    # Family-specific options recorded in the checkpoint (name -> default).
    option_defaults: ClassVar[dict[str, Any]] = {}
    # The stock pipeline's keyword for each Conditioning field: field -> (prompt side, negative side).
    embedding_kwargs: ClassVar[dict[str, tuple[str, str]]] = {"embeds": ("prompt_embeds", "negative_prompt_embeds")}
    # The pipeline component that is the denoiser (a fine-tuned one replaces it: GD).
    denoiser_component: ClassVar[str] = "unet"
    # The text encoder starts every prompt with the same begin-of-text token (CLIP's BOS): that position
    # carries no prompt information. T5 (PixArt) has none: its first token is the first word.
    first_token_is_bos: ClassVar[bool] = True
    # The stock pipeline decodes in fp32 when the pipeline runs in fp16 and the VAE's config says force_upcast (SDXL);
    # encode_images does the same for encoding.
    upcasts_fp16_vae: ClassVar[bool] = False
    # Parts of the stock pipeline that change generated pixels after decoding, switched off at loading as the
    # authors' runs had them off: name -> the from_pretrained / from_single_file keywords that switch it off.
    # (SD1.5: the safety checker blacks out every image it flags; the authors commented out run_safety_checker
    # and loaded validation pipelines with safety_checker=None.)
    output_filters: ClassVar[dict[str, dict[str, Any]]] = {}
    # The width of the text embedding of the family's released models (the sharpener's size, --help and the docs).
    released_text_dim: ClassVar[int]
    # The stock encoding leaves some entries of the embedding exactly zero by construction, not by content (SD3 pads
    # its CLIP columns up to T5's width, and fills an absent T5 with zeros): the sharpener keeps them zero.
    zero_padded: ClassVar[bool] = False
    # Class names of the denoiser's repeated blocks, compiled one by one by compile_denoiser("regional").
    repeated_blocks: ClassVar[tuple[str, ...]] = ("BasicTransformerBlock", "ResnetBlock2D")
    # The diffusion process, asked for by dice.distillation (noise, timesteps) and dice.sampling (the sampler).
    # The defaults are DDPM's epsilon prediction, as SD1.5, SDXL and PixArt-alpha were trained; a flow-matching
    # family overrides them (dice.adapters.flow_matching).
    # What the denoiser predicts, so what the CFG teacher and the student are compared in.
    prediction_type: ClassVar[str] = "epsilon"
    # The diffusers scheduler of the forward (noising) process, built from the model's own scheduler config.
    training_scheduler: ClassVar[str] = "DDPMScheduler"
    # The sampler used unless one is asked for (a name of dice.sampling.SCHEDULERS): the paper's DPM-Solver++ (2M).
    default_scheduler: ClassVar[str] = "dpmsolver++"

    def __init__(self, pipe, model: str, options: dict[str, Any] | None = None):
        unknown = set(options or {}) - set(self.option_defaults)
        if unknown:
            raise ValueError(f"unknown {self.family} options: {sorted(unknown)}")
        self.pipe = pipe
        self.model = model
        self.options = {**self.option_defaults, **{k: v for k, v in (options or {}).items() if v is not None}}
        # The output filters switched off when loading (from_pretrained); a pipeline handed in as it is keeps its own.
        self.removed_output_filters: list[str] = []
        # Training's --denoiser_autocast: the frozen denoiser's calls (and PnP's guide) under torch.autocast to this
        # dtype, as the authors called their bf16-cast networks under torch.autocast("cuda") (fp16). None: as cast.
        self.denoiser_autocast: torch.dtype | None = None
        import diffusers

        # The forward (noising) process of the model's own training schedule.
        self.noise_scheduler = getattr(diffusers, self.training_scheduler).from_config(pipe.scheduler.config)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def pipeline_class(cls):
        import diffusers

        return getattr(diffusers, cls.pipeline_class_name)

    @classmethod
    def from_pretrained(
        cls, model: str, *, revision: str | None = None, variant: str | None = None,
        torch_dtype: torch.dtype | None = None, single_file_config: str | None = None,
        components: dict[str, Any] | None = None, **options,
    ) -> "Adapter":
        """Load the base model from a hub id, a local diffusers folder or a single checkpoint file.

        ``components`` replaces pipeline parts at load time (e.g. SDXL's fp16-fixed VAE). The family's
        ``output_filters`` (SD1.5's safety checker, SDXL's watermark) are switched off, as in the authors' runs.
        """
        model = str(model)
        switched_off = {key: value for keywords in cls.output_filters.values() for key, value in keywords.items()}
        kwargs: dict[str, Any] = {"dtype": torch_dtype, **switched_off, **(components or {})}
        if os.path.isfile(model) or looks_like_file(model):
            if not os.path.isfile(model):
                raise ModelLoadError(f"checkpoint file '{model}' does not exist.")
            found = family_of_single_file(model)
            if found is not None and found != cls.family:
                raise ModelLoadError(
                    f"'{model}' looks like a {found} checkpoint, but this is the {cls.family} trainer/"
                    f"sampler. Use the {found} entry point ({entry_script(found)}) or a {cls.family} model."
                )
            # The single file's components come from its config folder (or the hub repo diffusers picks for it).
            index = _model_index_or_none(single_file_config, revision) if single_file_config else None
            try:
                pipe = cls.pipeline_class().from_single_file(model, config=single_file_config, **kwargs)
            except Exception as err:  # noqa: BLE001
                hint = (
                    f" Check that --single_file_config '{single_file_config}' is a diffusers folder (with "
                    "model_index.json) of the same architecture as the file."
                    if single_file_config else
                    " A single file holds only weights: diffusers reads the pipeline's component configs and "
                    "tokenizers from the hub repo of the detected model type. Offline, pass "
                    "--single_file_config (single_file_config= in Python) with a local diffusers folder of the "
                    "same architecture (model_index.json, component configs and tokenizer files; its weights "
                    "are not needed)."
                )
                cause = str(err).strip().rstrip(".") or type(err).__name__
                raise ModelLoadError(f"could not load single-file checkpoint '{model}': {cause}.{hint}") from err
        else:
            index = read_model_index(model, revision)
            class_name = index.get("_class_name") if index else None
            found = family_of_pipeline_class(class_name) if class_name else None
            if class_name and found != cls.family:
                looks = f"a {found} model" if found else f"a {class_name}"
                raise ModelLoadError(
                    f"'{model}' is {looks} ({class_name}), not a {cls.family} model. "
                    + (f"Use {entry_script(found)} / --family {found}." if found else "Supported: SD1.5, SDXL, PixArt-alpha, PixArt-Sigma, SD3/3.5.")
                )
            try:
                pipe = cls.pipeline_class().from_pretrained(model, revision=revision, variant=variant, **kwargs)
            except Exception as err:  # noqa: BLE001
                where = (
                    "it is not a local folder or file, and it is not in the Hugging Face cache while "
                    "HF_HUB_OFFLINE=1" if is_offline() else "check the hub id, --revision/--variant and your network"
                )
                raise ModelLoadError(
                    f"could not load base model '{model}': {where}. Fix: pass a local diffusers folder or a "
                    f".safetensors file, or download it first (huggingface-cli download {model}). "
                    f"Cause: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                ) from err
        pipe.set_progress_bar_config(disable=True)
        adapter = cls(pipe, model, options)
        adapter.removed_output_filters = cls.output_filters_of(index)
        return adapter

    @classmethod
    def output_filters_of(cls, index: dict | None) -> list[str]:
        """The output filters the stock pipeline would apply to a model with this ``model_index.json`` (unknown,
        e.g. a single file without a config folder: all of them), i.e. those loading switched off."""
        if index is None:
            return sorted(cls.output_filters)
        return sorted(name for name in cls.output_filters if (index.get(name) or [None])[0] is not None)

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Family-specific command-line options (their values land in ``self.options``)."""

    @classmethod
    def default_guidance_scale(cls, model: str) -> float | None:
        """The CFG teacher's scale for ``model`` when none is given, where the model's makers recommend one (SD3's
        model cards); None: the preset's, the paper's w = 5."""
        return None

    @classmethod
    def components_to_pass(cls, model: str, revision: str | None = None) -> dict:
        """Components the stock ``from_pretrained`` of ``model`` must be given explicitly (a model card's snippet names
        them); none for most families."""
        return {}

    @classmethod
    def from_args(cls, args, torch_dtype: torch.dtype | None = None) -> "Adapter":
        options = {name: getattr(args, name, None) for name in cls.option_defaults}
        return cls.from_pretrained(
            args.pretrained_model_name_or_path, revision=args.revision, variant=args.variant,
            torch_dtype=torch_dtype, single_file_config=args.single_file_config, **options,
        )

    # ---- frozen modules --------------------------------------------------------------------
    def frozen_modules(self) -> dict[str, nn.Module]:
        return {name: module for name, module in self.pipe.components.items() if isinstance(module, nn.Module)}

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self.pipe, self.denoiser_component)

    def freeze(self, device: torch.device | str, dtype: torch.dtype) -> "Adapter":
        """No gradients into the base model; move it and cast it to the mixed-precision dtype."""
        for module in self.frozen_modules().values():
            module.requires_grad_(False)
            module.eval()
        self.pipe.to(device)
        for module in self.frozen_modules().values():
            if any(p.dtype != dtype for p in module.parameters()):
                module.to(dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def enable_xformers(self) -> bool:
        """Try xformers attention; on failure log once and keep PyTorch SDPA."""
        try:
            self.denoiser.enable_xformers_memory_efficient_attention()
            logger.info("xformers memory-efficient attention enabled")
            return True
        except Exception as err:  # noqa: BLE001 - any failure means: fall back
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            logger.warning("xformers requested but unusable (%s); using PyTorch scaled_dot_product_attention", reason)
            return False

    def compile_denoiser(self, how: str = "full", **compile_options) -> int:
        """``torch.compile`` the frozen denoiser in place; returns the number of compiled modules.

        "full": the whole model, one graph per call signature (teacher without gradients at twice
        the batch, student with them). "regional": every module named in ``repeated_blocks`` on its
        own; blocks of one kind share compiled code, so it compiles in a fraction of the time, at
        the cost of graph breaks between blocks.
        """
        if how not in COMPILE_CHOICES:
            raise ValueError(f"compile must be one of {COMPILE_CHOICES}, not {how!r}")
        if how == "full":
            modules = [self.denoiser]
        else:
            modules = [m for m in self.denoiser.modules() if type(m).__name__ in self.repeated_blocks]
            # Each block shape (channels, resolution) x (gradients or not) x batch is one compilation.
            import torch._dynamo

            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for module in modules:
            module.compile(**compile_options)
        logger.info("torch.compile (%s): %d module(s) of the denoiser", how, len(modules))
        return len(modules)

    # ---- text side -------------------------------------------------------------------------
    @property
    def text_dim(self) -> int:
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    def encode_negative(self, prompts: list[str]) -> Conditioning:
        """The null/negative side ``u`` of the trained methods (their teacher, their sharpener's context); the empty
        prompt is the null embedding."""
        return self.encode_prompts(prompts)

    def encode_stock_negative(self, prompts: list[str]) -> Conditioning:
        """``u`` of the training-free baselines (CFG, Scaling): what the stock pipeline feeds for these negative
        prompts. The same as :meth:`encode_negative` unless the family's stock pipeline has its own rule (SDXL)."""
        return self.encode_negative(prompts)

    def null_embedding(self, stock: bool = False) -> str | None:
        """How the empty prompt's ``u`` is made, for families where that is a choice ("encoded" / "zeros"), of the
        trained methods or (``stock``) of the baselines; None where it is always the encoded empty prompt."""
        return None

    def prepare_text_cache(self, prompts: list[str], negatives: list[str], accelerator=None) -> None:
        """Before training: a family with a huge text encoder may encode every prompt (captions,
        validation prompts) and negative (u, including "") once and unload the encoder. Default: no-op."""

    # ---- image side ------------------------------------------------------------------------
    @property
    def default_resolution(self) -> int:
        """The model's native image size: its denoiser's sample size in pixels, the stock pipeline's default
        (512 for SD1.5 and PixArt-XL-2-512, 1024 for SDXL; 32 for the shapes world)."""
        size = self.denoiser.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size) * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    @property
    def resolution_multiple(self) -> int:
        """Image sizes must be a multiple of this: one latent pixel per VAE factor, times the patch a transformer
        denoiser cuts the latent into (a UNet has none)."""
        return self.vae_scale_factor * (getattr(self.denoiser.config, "patch_size", None) or 1)

    @property
    def latent_channels(self) -> int:
        return self.pipe.vae.config.latent_channels

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled VAE latents (the mean of the posterior: deterministic), in the VAE's dtype."""
        vae = self.pipe.vae
        dtype = vae.dtype
        upcast = self.upcasts_fp16_vae and dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        encoder = [m for m in (vae.encoder, getattr(vae, "quant_conv", None)) if m is not None]
        if upcast:  # as the stock pipeline upcasts this VAE to decode: in fp16 it overflows (NaN latents)
            for module in encoder:
                module.to(torch.float32)
        try:
            pixels = pixels.to(vae.device, torch.float32 if upcast else dtype, non_blocking=True)
            latents = vae.encode(pixels).latent_dist.mode()
        finally:
            if upcast:  # back: the stock pipeline reads the VAE's dtype from its first (encoder) weight
                for module in encoder:
                    module.to(dtype)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).to(dtype)

    def draw_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` training timesteps, drawn on the host with ``generator``: uniform over the model's training
        timesteps (the paper's Algorithm 1, as DDPM trained the model)."""
        return torch.randint(0, self.num_train_timesteps, (count,), generator=generator)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_t`` of clean latents at ``timesteps``: the model's own forward process."""
        return self.noise_scheduler.add_noise(latents, noise, timesteps)

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def denoiser_inputs(self, x_t: torch.Tensor, cond: Conditioning, sizes: torch.Tensor | None = None) -> dict[str, Any]:
        """The text (and size) keyword arguments of a denoiser call on ``x_t``; a guide network built
        from the denoiser (PnP's ControlNet) takes the same ones.

        ``sizes`` [B, 4] = (original height, original width, crop top, crop left) of each training
        image, for families with size micro-conditioning (SDXL); others ignore it.
        """
        raise NotImplementedError

    def predict_noise(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, sizes: torch.Tensor | None = None,
        denoiser: nn.Module | None = None, **extra,
    ) -> torch.Tensor:
        """The denoiser's prediction for noisy latents ``x_t`` at timesteps ``t`` [B]: the noise, or the velocity of a
        flow-matching family (``prediction_type``).

        ``denoiser``: another module called the same way (a method's trainable student; default the
        frozen base denoiser); ``extra``: further keyword arguments of that call (GD's ``timestep_cond``,
        PnP's residuals).
        """
        with self.autocast():
            out = (denoiser or self.denoiser)(x_t, timestep=t, **self.denoiser_inputs(x_t, cond, sizes), **extra).sample
        return self.noise_of(out)

    def autocast(self):
        """The context of a denoiser call: torch.autocast to ``denoiser_autocast`` when set, else nothing."""
        if self.denoiser_autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.denoiser_autocast)

    def noise_of(self, output: torch.Tensor) -> torch.Tensor:
        """The noise prediction within the denoiser's output (PixArt also predicts the variance)."""
        return output

    @classmethod
    def check_scheduler(cls, class_name: str) -> None:
        """Refuse, in one line, a sampling scheduler (a diffusers class name) that cannot sample this family."""

    def scheduler_overrides(self, class_name: str) -> dict[str, Any]:
        """What a sampling scheduler of ``class_name`` needs beyond the model's own scheduler config (checked
        first with :meth:`check_scheduler`); nothing for epsilon prediction."""
        self.check_scheduler(class_name)
        return {}

    # ---- back to the stock pipeline --------------------------------------------------------
    def pipeline_kwargs(self, cond: Conditioning, uncond: Conditioning) -> dict[str, Any]:
        """Everything the stock pipeline needs to sample from these embeddings."""
        return self.embedding_pipeline_kwargs(cond, uncond)

    def embedding_pipeline_kwargs(self, cond: Conditioning, uncond: Conditioning) -> dict[str, Any]:
        """Only the embeddings, under the pipeline's keyword names (see ``embedding_kwargs``)."""
        kwargs = {}
        for field, (prompt_name, negative_name) in self.embedding_kwargs.items():
            kwargs[prompt_name], kwargs[negative_name] = getattr(cond, field), getattr(uncond, field)
        return kwargs

    def conditioning_from_pipeline_kwargs(self, kwargs: dict[str, Any], negative: bool = False) -> Conditioning | None:
        """Pop the embeddings a caller handed to the pipeline (one side); None if it passed none.

        The inverse of :meth:`embedding_pipeline_kwargs`, for a caller's own ``prompt_embeds`` & co.
        """
        side = 1 if negative else 0
        names = {field: pair[side] for field, pair in self.embedding_kwargs.items()}
        given = {field: kwargs.pop(name, None) for field, name in names.items()}
        if given["embeds"] is None:
            return None
        missing = [names[field] for field, value in given.items() if value is None]
        if missing:
            raise ValueError(f"{names['embeds']} was given without {', '.join(missing)}; the {self.family} pipeline needs both")
        return Conditioning(**given)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about the base model and family choices."""
        return {"family": self.family, "text_dim": self.text_dim, "num_tokens": self.num_tokens,
                "family_options": dict(self.options)}
