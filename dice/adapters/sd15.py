"""Stable Diffusion 1.5 and its variants: CLIP ViT-L last hidden state, 77 x 768."""
from __future__ import annotations

import torch

from .base import Adapter, Conditioning


class SD15Adapter(Adapter):
    family = "sd15"
    pipeline_class_name = "StableDiffusionPipeline"
    released_text_dim = 768  # CLIP ViT-L
    # The stock pipeline blacks out every image its safety checker flags, which would enter FID, CLIP, AS and HPS as
    # black images; the authors' pipeline had run_safety_checker commented out, their validation safety_checker=None.
    output_filters = {"safety_checker": {"safety_checker": None, "requires_safety_checker": False}}

    @property
    def text_dim(self) -> int:
        return self.pipe.text_encoder.config.hidden_size

    @property
    def num_tokens(self) -> int:
        return self.pipe.tokenizer.model_max_length

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        # The stock encoder: the same tokenisation and hidden state the pipeline itself would use.
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return Conditioning(embeds=embeds)

    def denoiser_inputs(self, x_t, cond, sizes=None):
        return {"encoder_hidden_states": cond.embeds.to(self.dtype)}
