"""Tiny pipelines built in code: the embedded default for the demo and for every test.

They have the real architectures of SD1.5 / SDXL / PixArt-alpha / PixArt-Sigma / SD3 at a few thousand parameters,
random weights, and tokenizers written from a small vocabulary, so nothing is downloaded. They are
saved to disk and reloaded through the same ``from_pretrained`` paths a real model takes.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

# A small closed vocabulary: the demo's synthetic captions use only these words.
WORDS = (
    "a an the of on in with and red green blue yellow white black orange purple small large big tiny "
    "round square striped dotted bright dark cat dog bird car house tree boat flower ball cup chair "
    "apple sky field street table photo picture painting next to near under above sitting standing "
    "bad quality blurry ugly low resolution deformed worst jpeg artifacts"
).split()

FAMILIES = ("sd15", "sdxl", "pixart", "pixart-sigma", "sd3")


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2 / CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    symbols, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shift)
            shift += 1
    return list(symbols.values())


def _write_clip_tokenizer_files(folder: Path) -> None:
    """Byte-level BPE vocabulary: every byte symbol, its end-of-word form, the closed WORDS list."""
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges = []
    for word in sorted(set(WORDS)):
        # Merge left to right so each word ends up as one token "word</w>".
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    unique_merges = list(dict.fromkeys(merges))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(unique_merges) + "\n")


def tiny_clip_tokenizer(workdir: Path):
    from transformers import CLIPTokenizer

    _write_clip_tokenizer_files(workdir)
    return CLIPTokenizer(str(workdir / "vocab.json"), str(workdir / "merges.txt"), model_max_length=77)


def tiny_t5_tokenizer(model_max_length: int = 120):
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in dict.fromkeys(WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _clip_text_config(tokenizer, hidden_size=32, projection_dim=32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden_size, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=projection_dim, vocab_size=len(tokenizer), max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae(**config):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4, norm_num_groups=2, sample_size=32, **config,
    )


def _sd_scheduler():
    from diffusers import DDIMScheduler

    # The SD1.5 schedule (scaled-linear betas, eps prediction), as in its scheduler_config.json.
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000,
    )


def flagging_safety_checker():
    """A tiny ``StableDiffusionSafetyChecker`` that flags every image (the stock SD pipeline then returns it black)
    and its image processor: what a real SD1.5 checkpoint's checker does to some images, for every image."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    tower = dict(hidden_size=16, intermediate_size=37, num_attention_heads=2, num_hidden_layers=1)
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=tower, vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=8))
    with torch.no_grad():  # a concept threshold below every cosine similarity: every concept score is positive
        checker.concept_embeds_weights.fill_(-2.0)
    return checker, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_sd15(workdir: Path, safety_checker: bool = False):
    """``safety_checker``: with a :func:`flagging_safety_checker`, as real SD1.5 checkpoints carry a checker."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer(workdir / "_tokenizer")
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2,
    )
    checker, processor = flagging_safety_checker() if safety_checker else (None, None)
    return StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=_sd_scheduler(), safety_checker=checker, feature_extractor=processor,
        requires_safety_checker=safety_checker,
    )


def build_sdxl(workdir: Path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer(workdir / "_tokenizer")
    tokenizer_2 = tiny_clip_tokenizer(workdir / "_tokenizer_2")
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer_2))
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=2,
    )
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", num_train_timesteps=1000,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _tiny_t5(tokenizer, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))


def build_pixart(workdir: Path, pipeline_class: str = "PixArtAlphaPipeline", max_sequence_length: int = 120):
    import diffusers
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    tokenizer = tiny_t5_tokenizer(max_sequence_length)
    text_encoder = _tiny_t5(tokenizer)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, cross_attention_dim=24, in_channels=4, out_channels=8,
        norm_type="ada_norm_single", num_embeds_ada_norm=1000, attention_bias=True,
        activation_fn="gelu-approximate", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
    )
    return getattr(diffusers, pipeline_class)(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=_tiny_vae(), transformer=transformer,
        scheduler=scheduler,
    )


def build_pixart_sigma(workdir: Path):
    # PixArt-Sigma: PixArt-alpha's transformer class and T5 at 300 tokens, in its own pipeline.
    return build_pixart(workdir, "PixArtSigmaPipeline", max_sequence_length=300)


def build_sd3(workdir: Path, t5: bool = True):
    """SD3.5's layout: two CLIPs with projection of different widths (16 + 24 = 40 columns, zero-padded to the
    joint width 48 = T5's), dual-attention and RMS-normalised MMDiT blocks, a 16-channel-style VAE with a shift
    factor, the flow-matching scheduler at shift 3. ``t5=False``: no T5 (``text_encoder_3=None``, the pipeline
    then uses zeros for its tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer(workdir / "_tokenizer")
    tokenizer_2 = tiny_clip_tokenizer(workdir / "_tokenizer_2")
    text_encoder = CLIPTextModelWithProjection(_clip_text_config(tokenizer, hidden_size=16, projection_dim=16))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer_2, hidden_size=24, projection_dim=24))
    tokenizer_3 = tiny_t5_tokenizer(256) if t5 else None
    text_encoder_3 = _tiny_t5(tokenizer_3, d_model=48) if t5 else None
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=3,
        joint_attention_dim=48, caption_projection_dim=24, pooled_projection_dim=16 + 24, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    vae = _tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )


BUILDERS = {"sd15": build_sd15, "sdxl": build_sdxl, "pixart": build_pixart, "pixart-sigma": build_pixart_sigma,
            "sd3": build_sd3}


def build_tiny_pipeline(family: str = "sd15", seed: int = 0, workdir: str | os.PathLike | None = None, **variant):
    """A tiny random-weight pipeline of ``family``, reproducible from ``seed``; ``variant``: the builder's options
    (``t5=False`` for SD3 without T5)."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        return BUILDERS[family](Path(workdir or tmp), **variant)


def save_tiny_pipeline(path: str | os.PathLike, family: str = "sd15", seed: int = 0, **variant) -> Path:
    """Build and save a tiny pipeline as a diffusers folder; returns the folder (kept if it exists)."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    pipe = build_tiny_pipeline(family, seed, **variant)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
