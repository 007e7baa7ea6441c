"""PixArt-alpha: Flan-T5-XXL, 120 tokens x 4096, with an attention mask; a DiT with learned sigma.

The authors released no PixArt code, so three choices of how DICE meets T5's masked embeddings are ours;
they are options recorded in the checkpoint with the family (README "PixArt-α: design decisions" gives the
reasons for the defaults) and applied by :mod:`dice.methods.dice`:

- ``pixart_mask``: the attention mask of the *sharpened* prompt at the denoiser. "prompt" (default):
  the T5 mask, padding invisible, so only real tokens can be sharpened and a zero residual is exactly
  the unguided model. "full": all 120 tokens visible, so sharpened padding can carry information as
  CLIP's padding tokens do in SD (paper 4.3). The teacher always uses the prompts' own masks.
- ``keep_first_token``: T5 has no BOS token (the first token is the first word), so by default it is
  sharpened like any other token.
- ``pixart_context_mask``: which tokens of u the sharpener attends to. "all" (default) or "prompt"
  (u's real tokens only; for the empty prompt that is the single "</s>" token, which makes the
  sharpener's output the same for every prompt).
"""
from __future__ import annotations

import argparse
import logging

import torch

from .base import Adapter, Conditioning
from .t5 import KeepsT5Dtype
from .text_cache import TextEmbeddingCache

logger = logging.getLogger("dice")

# PixArt-alpha was trained on 120 T5 tokens (the pipeline's max_sequence_length).
MAX_SEQUENCE_LENGTH = 120
MASK_CHOICES = ("prompt", "full")
CONTEXT_MASK_CHOICES = ("all", "prompt")


class PixArtAdapter(KeepsT5Dtype, Adapter):
    family = "pixart"
    pipeline_class_name = "PixArtAlphaPipeline"
    released_text_dim = 4096  # T5-XXL
    denoiser_component = "transformer"
    t5_component = "text_encoder"
    first_token_is_bos = False
    # The three choices DICE makes for T5's masked embeddings (module docstring; applied by dice.methods.dice).
    option_defaults = {"pixart_mask": "prompt", "keep_first_token": False, "pixart_context_mask": "all"}
    embedding_kwargs = {
        "embeds": ("prompt_embeds", "negative_prompt_embeds"),
        "mask": ("prompt_attention_mask", "negative_prompt_attention_mask"),
    }
    repeated_blocks = ("BasicTransformerBlock",)
    max_sequence_length = MAX_SEQUENCE_LENGTH  # the T5 tokens the model was trained on

    def __init__(self, pipe, model, options=None):
        super().__init__(pipe, model, options)
        for name, choices in (("pixart_mask", MASK_CHOICES), ("pixart_context_mask", CONTEXT_MASK_CHOICES)):
            if self.options[name] not in choices:
                raise ValueError(f"{name} must be one of {choices}, not {self.options[name]!r}")
        self.text_cache_dir: str | None = None
        self.text_cache = None  # a TextEmbeddingCache once prepare_text_cache has run

    @classmethod
    def add_arguments(cls, parser) -> None:
        d = cls.option_defaults
        parser.add_argument(
            "--pixart_mask", choices=MASK_CHOICES, default=d["pixart_mask"],
            help="attention mask of the sharpened prompt at the transformer (student, DICE sampling): 'prompt' = "
            "the T5 mask (padding invisible), 'full' = all tokens visible (120 for PixArt-alpha, 300 for PixArt-Sigma)",
        )
        parser.add_argument(
            "--keep_first_token", action=argparse.BooleanOptionalAction, default=d["keep_first_token"],
            help="restore the first token after sharpening (SD's BOS rule); T5 has no BOS, its first token is the first word",
        )
        parser.add_argument(
            "--pixart_context_mask", choices=CONTEXT_MASK_CHOICES, default=d["pixart_context_mask"],
            help="tokens of the negative/empty embedding u the sharpener attends to: 'all' or only u's real tokens ('prompt')",
        )
        parser.add_argument(
            "--text_embedding_cache", default=None, metavar="DIR",
            help="encode every caption, negative and validation prompt once into safetensors shards in DIR "
            "(reused and extended by later runs), then unload T5 from the GPU for the whole training run",
        )

    @classmethod
    def from_args(cls, args, torch_dtype: torch.dtype | None = None) -> "PixArtAdapter":
        adapter = super().from_args(args, torch_dtype)
        adapter.text_cache_dir = getattr(args, "text_embedding_cache", None)
        return adapter

    # ---- text side -------------------------------------------------------------------------
    @property
    def text_dim(self) -> int:
        return self.pipe.transformer.config.caption_channels

    @property
    def num_tokens(self) -> int:
        return self.max_sequence_length

    @torch.no_grad()
    def _encode_live(self, prompts: list[str]) -> Conditioning:
        if self.pipe.text_encoder is None:
            raise RuntimeError("the T5 text encoder was unloaded (text embedding cache in use) and cannot encode new prompts")
        # The stock encoder: lower-case + strip (clean_caption=False), the family's T5 length, T5 mask.
        embeds, mask, _, _ = self.pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, device=self.pipe.text_encoder.device,
            clean_caption=False, max_sequence_length=self.max_sequence_length,
        )
        return Conditioning(embeds=embeds, mask=mask).to(self.device)

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        if self.text_cache is not None:
            padding_matters = self.options["pixart_mask"] == "full"
            return self.text_cache.lookup(list(prompts), need_padding=padding_matters).to_device(self.device)
        return self._encode_live(prompts)

    def encode_negative(self, prompts: list[str]) -> Conditioning:
        if self.text_cache is not None:  # u's padding tokens are sharpener context: always stored
            return self.text_cache.lookup(list(prompts), need_padding=True).to_device(self.device)
        return self._encode_live(prompts)

    # ---- text embedding cache --------------------------------------------------------------
    def prepare_text_cache(self, prompts: list[str], negatives: list[str], accelerator=None) -> None:
        """With ``--text_embedding_cache DIR``: encode all prompts once, then drop T5 from the GPU.

        ``negatives`` (u) keep their padding tokens, which the sharpener reads; with the prompt mask
        the padding of a prompt is invisible to the transformer and never stored (about 8x smaller).
        """
        if not self.text_cache_dir:
            return

        def stored_tokens(cond: Conditioning) -> list[int]:
            if self.options["pixart_mask"] == "full":
                return [self.num_tokens] * len(cond)
            return cond.mask.sum(dim=1).tolist()

        encoder = self.pipe.text_encoder
        # Not the model name: PixArt 512 and 1024 share one T5, and a cache may serve both. A probe
        # prompt re-encoded on every reuse catches a different encoder.
        fingerprint = {"family": self.family, "num_tokens": self.num_tokens, "text_dim": self.text_dim,
                       "dtype": str(encoder.dtype)}
        self.text_cache = TextEmbeddingCache.build(
            self.text_cache_dir, prompts=list(prompts), full_prompts=list(negatives), encode=self._encode_live,
            stored_tokens=stored_tokens, num_tokens=self.num_tokens, fingerprint=fingerprint, accelerator=accelerator,
        )
        # Every prompt training needs is cached: free the encoder (the pipeline runs on embeddings).
        self.pipe.register_modules(text_encoder=None)
        del encoder
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("text embedding cache %s ready (%d prompts); T5 unloaded", self.text_cache_dir, len(self.text_cache.entries))

    # ---- denoiser --------------------------------------------------------------------------
    def denoiser_inputs(self, x_t, cond, sizes=None):
        added = {"resolution": None, "aspect_ratio": None}
        if self.pipe.transformer.use_additional_conditions:
            # PixArt-1024 models: image size and aspect ratio, as the pipeline passes them at sampling
            # time (the generated size), so the distilled behaviour is the one used for generation.
            height, width = x_t.shape[-2] * self.vae_scale_factor, x_t.shape[-1] * self.vae_scale_factor
            # Filled on the device: a tensor built from Python numbers would be a host-to-GPU copy that waits.
            resolution = torch.full((len(x_t), 2), height, device=x_t.device, dtype=self.dtype)
            resolution[:, 1] = width
            added = {
                "resolution": resolution,
                "aspect_ratio": torch.full((len(x_t), 1), height / width, device=x_t.device, dtype=self.dtype),
            }
        return {"encoder_hidden_states": cond.embeds.to(self.dtype), "encoder_attention_mask": cond.mask,
                "added_cond_kwargs": added}

    def noise_of(self, output):
        # Learned sigma: the output stacks eps and the variance channels; eps comes first.
        return output[:, : self.latent_channels]

    # ---- back to the stock pipeline --------------------------------------------------------
    def pipeline_kwargs(self, cond, uncond):
        return {
            **self.embedding_pipeline_kwargs(cond, uncond),
            "negative_prompt": None,  # the default "" conflicts with negative_prompt_embeds
            # Binning maps a requested size to the nearest trained aspect-ratio bucket and resizes the
            # image back; sampling here is square at the requested size, where binning is the identity
            # for the standard sizes, and tiny models have no bucket table at all.
            "use_resolution_binning": False,
            "clean_caption": False,
        }
