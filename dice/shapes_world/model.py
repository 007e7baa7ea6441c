"""The shapes world's text-to-image model: a small Stable Diffusion 1.5 built from stock classes.

``AutoencoderKL`` (factor 2: 32x32x3 images <-> 16x16x4 latents), ``UNet2DConditionModel``,
``CLIPTextModel`` with a CLIP BPE tokenizer in which every world word is one token, and the SD1.5
noise schedule, assembled as a ``StableDiffusionPipeline``: it saves, loads and samples like any
SD1.5 checkpoint, so every entry point takes it as ``--pretrained_model_name_or_path``.
"""
from __future__ import annotations

import json
from pathlib import Path

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


def build_tokenizer(folder: str | Path):
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


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
