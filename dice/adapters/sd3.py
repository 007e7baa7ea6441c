"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``, ``SD3Transformer2DModel``): flow matching, three text encoders.

The prompt embedding is the stock pipeline's ``prompt_embeds`` [B, 77 + L, 4096]: the penultimate hidden states of
CLIP-L and CLIP-G side by side (77 tokens, 768 + 1280 = 2048 columns, zero-padded to T5's 4096), then L T5-XXL tokens
(``max_sequence_length``, the pipeline's 256 by default; diffusers' SD3 training examples use 77). Without T5
(``text_encoder_3=None``, a stock configuration) the pipeline puts L zero tokens there. u is the encoding of the
negative prompt, ``""`` by default, as the stock pipeline encodes it (no zeros).

DICE's rule here (dice.methods.dice), from the paper's reasoning, not tuned:
- the whole token sequence is sharpened, CLIP and T5 tokens alike: the sharpener acts per token, attending over u, so
  it takes any number of tokens (ComfyUI pads T5 only to the prompt's length);
- the first token, CLIP's begin-of-text token (the same vector for every prompt), is restored, as for SD1.5/SDXL;
- entries the encoding leaves exactly zero by construction stay zero: the padding of the CLIP columns (2048 to 4096)
  and, without T5, the T5 tokens. They carry no prompt information and the model only ever saw zeros there, so the
  sharpener rewrites what the text encoders produce, as for SDXL;
- the pooled vector (both CLIPs' pooled outputs, [B, 2048]) is sharpened too (``--pooled_embedding sharpen``, the
  default): it joins the sequence as one more token, zero-padded to 4096, for c and u alike, so the same sharpener
  (the paper's layout, 5,248,000 parameters) rewrites it. The paper's reasoning is that the unguided model on the
  rewritten text conditioning must reproduce CFG, and CFG changes both inputs the text gives SD3: the sequence and the
  pooled vector, which (with the timestep) sets the modulation of every block of both streams, text and image. SDXL's
  rule (the authors' code: its pooled vector passes unchanged) is ``--pooled_embedding keep``. The teacher gets
  ``[u_pooled, c_pooled]`` either way.

The guidance scale of the CFG teacher is the model card's for the models below (:data:`MODEL_CARDS`), else the
paper's 5; ``--guidance_scale`` overrides it, and the checkpoint records it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import int_between
from .base import Conditioning
from .flow_matching import FlowMatchingAdapter
from .registry import looks_like_file, read_model_index
from .t5 import KeepsT5Dtype

# The stock pipeline's default T5 length (StableDiffusion3Pipeline.__call__ / encode_prompt); it refuses over 512.
MAX_SEQUENCE_LENGTH = 256
MAX_SEQUENCE_LENGTH_LIMIT = 512
POOLED_CHOICES = ("sharpen", "keep")


@dataclass(frozen=True)
class ModelCard:
    """What a model's card recommends (guidance scale, size): not paper facts (the paper has no SD3), the makers'."""

    hub_id: str
    guidance_scale: float
    resolution: int
    source: str


# By the short name sample.py --model_name and launch.sh use.
MODEL_CARDS: dict[str, ModelCard] = {
    "sd3.5-large": ModelCard("stabilityai/stable-diffusion-3.5-large", 3.5, 1024,
                             "huggingface.co/stabilityai/stable-diffusion-3.5-large, its diffusers example"),
    "sd3.5-medium": ModelCard("stabilityai/stable-diffusion-3.5-medium", 4.5, 1024,
                              "huggingface.co/stabilityai/stable-diffusion-3.5-medium, its diffusers example"),
    "sd3-medium": ModelCard("stabilityai/stable-diffusion-3-medium-diffusers", 7.0, 1024,
                            "huggingface.co/stabilityai/stable-diffusion-3-medium-diffusers, its diffusers example"),
}


def model_card(model: str | None) -> ModelCard | None:
    """The card of a hub id or short name (case-insensitive), else None (a local folder has none)."""
    wanted = str(model or "").strip().rstrip("/").lower()
    return next((card for name, card in MODEL_CARDS.items() if wanted in (name, card.hub_id.lower())), None)


class SD3Adapter(KeepsT5Dtype, FlowMatchingAdapter):
    family = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    released_text_dim = 4096  # T5-XXL's width, the joint attention width
    denoiser_component = "transformer"
    t5_component = "text_encoder_3"
    zero_padded = True
    option_defaults = {**FlowMatchingAdapter.option_defaults, "max_sequence_length": MAX_SEQUENCE_LENGTH,
                       "pooled_embedding": "sharpen"}
    embedding_kwargs = {
        "embeds": ("prompt_embeds", "negative_prompt_embeds"),
        "pooled": ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
    }
    repeated_blocks = ("JointTransformerBlock",)

    def __init__(self, pipe, model, options=None):
        super().__init__(pipe, model, options)
        if self.options["pooled_embedding"] not in POOLED_CHOICES:
            raise ValueError(f"pooled_embedding must be one of {POOLED_CHOICES}, not {self.options['pooled_embedding']!r}")
        length = self.options["max_sequence_length"]
        if not isinstance(length, int) or not 0 <= length <= MAX_SEQUENCE_LENGTH_LIMIT:
            raise ValueError(f"max_sequence_length must be a whole number from 0 to {MAX_SEQUENCE_LENGTH_LIMIT}, not {length!r}")

    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser)
        # Unset (None): the --preset's value if it has one (the flow shapes world's 8 zero T5 rows), else option_defaults.
        parser.add_argument(
            "--max_sequence_length", type=int_between(0, MAX_SEQUENCE_LENGTH_LIMIT), default=None,
            help=f"T5 tokens of the prompt embedding (unset: the preset's, else the stock pipeline's {MAX_SEQUENCE_LENGTH}; "
            "diffusers' SD3 training examples use 77). Recorded in the checkpoint; the sharpener also takes other lengths",
        )
        parser.add_argument(
            "--pooled_embedding", choices=POOLED_CHOICES, default=None,
            help="the pooled CLIP vector (it modulates every transformer block): 'sharpen' = rewritten by the sharpener as "
            "one more token, 'keep' = passed on unchanged (SDXL's rule). Unset: the preset's, else "
            f"'{cls.option_defaults['pooled_embedding']}'. Recorded in the checkpoint",
        )

    @classmethod
    def components_to_pass(cls, model: str, revision: str | None = None) -> dict:
        """A folder saved without T5 lists text_encoder_3 / tokenizer_3 as [null, null], which the stock loader
        refuses unless told None: what the user of such a model would pass."""
        index = None if os.path.isfile(str(model)) or looks_like_file(str(model)) else read_model_index(str(model), revision)
        return {name: None for name, entry in (index or {}).items() if entry == [None, None]}

    @classmethod
    def from_pretrained(cls, model, *, revision=None, components=None, **kwargs) -> "SD3Adapter":
        absent = cls.components_to_pass(model, revision)
        return super().from_pretrained(model, revision=revision, components={**absent, **(components or {})}, **kwargs)

    @classmethod
    def default_guidance_scale(cls, model: str) -> float | None:
        card = model_card(model)
        return card.guidance_scale if card else None

    # ---- text side -------------------------------------------------------------------------
    @property
    def text_dim(self) -> int:
        return self.pipe.transformer.config.joint_attention_dim

    @property
    def num_tokens(self) -> int:
        return self.pipe.tokenizer_max_length + self.options["max_sequence_length"]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        # The stock encoder: both CLIPs' penultimate states and pooled outputs, T5 (or its zeros), the same padding.
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            list(prompts), prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.options["max_sequence_length"],
        )
        return Conditioning(embeds=embeds, pooled=pooled)

    # ---- denoiser --------------------------------------------------------------------------
    def denoiser_inputs(self, x_t, cond, sizes=None):
        return {"encoder_hidden_states": cond.embeds.to(self.dtype), "pooled_projections": cond.pooled.to(self.dtype)}
