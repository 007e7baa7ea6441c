"""The shapes world's text-to-image models, built from stock classes.

The epsilon world: ``AutoencoderKL`` (factor 2: 32x32x3 images <-> 16x16x4 latents),
``UNet2DConditionModel``, ``CLIPTextModel`` with a CLIP BPE tokenizer in which every world word is one
token, and the SD1.5 noise schedule, assembled as a ``StableDiffusionPipeline``: it saves, loads and
samples like any SD1.5 checkpoint, so every entry point takes it as ``--pretrained_model_name_or_path``.

The flow-matching world: the same VAE and text encoder around an ``SD3Transformer2DModel`` with the
``FlowMatchEulerDiscreteScheduler``, assembled as a ``StableDiffusion3Pipeline`` without T5.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..errors import UserError
from ..presets import SHAPES_WORLD_FLOW_GUIDANCE_SCALE, SHAPES_WORLD_FLOW_OPTIONS
from ..testkit.tiny import _byte_symbols
from .world import WORDS

TEXT_DIM = 64
MAX_TOKENS = 77


def _bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair merge loop on one (ASCII) word: lowest-ranked adjacent pair first."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        ranked = [(ranks[pair], pair) for pair in zip(pieces, pieces[1:]) if pair in ranks]
        if not ranked:
            break
        _, (first, second) = min(ranked)
        merged, i = [], 0
        while i < len(pieces):
            if i < len(pieces) - 1 and (pieces[i], pieces[i + 1]) == (first, second):
                merged.append(first + second)
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def world_bpe_merges(words=WORDS) -> list[tuple[str, str]]:
    """Merges that turn each word into a single token.

    Words are added one by one: the current merges split a new word into pieces, and merges joining
    those pieces left to right are appended. New merges rank after all earlier ones, so they only act
    once a word's earlier merges are exhausted — words added before stay whole.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe_pieces(word, ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    return merges


def write_tokenizer_files(folder: str | Path, words=WORDS) -> Path:
    """``vocab.json`` + ``merges.txt`` of a byte-level CLIP BPE tokenizer whose vocabulary is the
    256 byte symbols (and their end-of-word forms), the merge results, and CLIP's two specials."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(symbol, len(vocab))
    merges = world_bpe_merges(words)
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def build_tokenizer(folder: str | Path, max_tokens: int = MAX_TOKENS):
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_tokens)


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=TEXT_DIM, vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_vae():
    from diffusers import AutoencoderKL

    # Two levels: a factor-2 autoencoder, 16x16x4 latents. No attention: 32 px scenes need none.
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, mid_block_add_attention=False, sample_size=32,
    )


def build_unet():
    from diffusers import UNet2DConditionModel

    # Cross-attention at 8x8 and 4x4; none at 16x16, where it would triple the cost on a CPU.
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=8,
    )


def build_scheduler():
    from diffusers import PNDMScheduler

    # Stable Diffusion 1.5's scheduler_config.json: scaled-linear betas 0.00085-0.012, 1000 steps, eps.
    return PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon",
    )


def assemble_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


# ---- the flow-matching world (StableDiffusion3Pipeline) ---------------------------------------------

# CLIP tokens per prompt: the stock SD3 pipeline pads every prompt to the tokenizer's model_max_length.
# The longest caption is 15 tokens (13 words, BOS, EOS); CLIP's causal attention makes these 16 rows
# exactly the first 16 of the epsilon world's 77.
FLOW_CLIP_TOKENS = 16
# The pipeline's max_sequence_length: with text_encoder_3=None it appends this many all-zero "T5" rows.
# SD3's default is 256; the rows are identical and the text tokens carry no position, so their number only
# sets how much attention one constant token draws; 8 keeps the joint sequence short (64 image + 24 text
# tokens) on a CPU. Sampling must pass the same value: the model never saw another (dice.presets records it for
# every entry point: the short name shapes-world-flow and the sd3 presets of the world carry it).
FLOW_T5_TOKENS = SHAPES_WORLD_FLOW_OPTIONS["max_sequence_length"]
# No timestep shift: SD3 trains its 256-pixel base at shift 1 and shifts (3.0) only for 1024-pixel images, where
# a given sigma destroys less of the (more redundant) image; these are 32-pixel images of 16x16 latents. On
# validation prompts, sampling with shift 3 gave the same CFG accuracy and FD (docs/shapes_world.md).
FLOW_SHIFT = 1.0
# CFG's scale on the flow world, chosen on validation prompts (seed 1) among 2, 3, 4, 5 and 7: accuracy is flat
# from 3 to 7 (0.967-0.971), and 3 has the best Frechet distance (docs/shapes_world.md). Also the teacher's w of the
# sd3 presets of the world (dice.presets).
FLOW_GUIDANCE_SCALE = SHAPES_WORLD_FLOW_GUIDANCE_SCALE


def flow_clip_encoder(text_encoder):
    """The world's frozen ``CLIPTextModel`` as the ``CLIPTextModelWithProjection`` SD3's CLIP slots hold:
    the same weights, and an identity ``text_projection`` (so the pooled vector is the encoder's own
    final-layer-normed end-of-text state, the epsilon world's ``pooler_output``)."""
    from transformers import CLIPTextModelWithProjection

    config = text_encoder.config
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(text_encoder.state_dict())  # transformers 5: text_model is a CLIPTextModel
    with torch.no_grad():
        encoder.text_projection.weight.copy_(torch.eye(config.projection_dim, config.hidden_size))
    return encoder.eval().requires_grad_(False)


def build_transformer():
    from diffusers import SD3Transformer2DModel

    # 16x16x4 latents in 2x2 patches: 64 image tokens. 6 joint blocks of width 96 (3 heads of 32): 1.98M
    # parameters, about the UNet's 1.69M, ~0.6 s per training step of 64 on one CPU thread. The text
    # columns are both CLIP slots side by side (2 x 64): no padding to a T5 width. RMS query/key norm as
    # in SD3.5, for a stable from-scratch run at a high learning rate.
    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=6, attention_head_dim=32,
        num_attention_heads=3, joint_attention_dim=2 * TEXT_DIM, caption_projection_dim=96,
        pooled_projection_dim=2 * TEXT_DIM, pos_embed_max_size=8, qk_norm="rms_norm",
    )


def build_flow_scheduler(shift: float = FLOW_SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def assemble_flow_pipeline(vae, text_encoder, tokenizer, transformer, shift: float = FLOW_SHIFT):
    """A stock ``StableDiffusion3Pipeline``: the world's encoder and tokenizer (``FLOW_CLIP_TOKENS`` long)
    in both CLIP slots, no T5; a copy of ``vae`` with SD3's ``shift_factor`` set to 0, so the transformer sees
    the latents the epsilon world's UNet sees (SD1.5 has no shift; the same ``scaling_factor``)."""
    from diffusers import StableDiffusion3Pipeline

    vae = copy.deepcopy(vae)
    vae.register_to_config(shift_factor=0.0)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_max_length = FLOW_CLIP_TOKENS
    clip = flow_clip_encoder(text_encoder)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=build_flow_scheduler(shift), vae=vae,
        text_encoder=clip, tokenizer=tokenizer, text_encoder_2=copy.deepcopy(clip), tokenizer_2=copy.deepcopy(tokenizer),
        text_encoder_3=None, tokenizer_3=None,
    )


# Samplers compared on the flow world (validation prompts): the stock one and two others diffusers has.
FLOW_SAMPLERS = ("euler", "heun", "dpmsolver++")


def flow_sampler(name: str, config):
    """A sampling scheduler for the flow world from its scheduler config (its ``shift``): ``euler`` the
    stock ``FlowMatchEulerDiscreteScheduler``, ``heun`` its second-order twin (two network evaluations per
    step but the last), ``dpmsolver++`` DPM-Solver++ 2M on flow sigmas."""
    import diffusers

    shift = config["shift"]
    if name == "euler":
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    if name == "heun":
        return diffusers.FlowMatchHeunDiscreteScheduler(num_train_timesteps=config["num_train_timesteps"], shift=shift)
    if name == "dpmsolver++":
        return diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=config["num_train_timesteps"], algorithm_type="dpmsolver++", solver_order=2,
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    raise UserError(f"unknown flow-world sampler {name!r}. Use one of {', '.join(FLOW_SAMPLERS)}")
