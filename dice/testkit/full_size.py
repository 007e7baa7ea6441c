"""The real architectures of SD1.5, SDXL and PixArt-alpha as diffusers / transformers configs (built with random
weights: nothing can be downloaded here).

The benchmarks' full-size setups (``benchmarks/common.py``) and the ComfyUI test checkpoints
(:mod:`dice.testkit.comfyui`) are built from them. Speed and memory depend on the architecture, not on the weights.
"""
from __future__ import annotations

# ---- the real SD1.5 architecture, random weights ---------------------------------------------
# Configs as in runwayml/stable-diffusion-v1-5 (unet/, vae/, text_encoder/, scheduler/ config.json).
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD15_TEXT_CONFIG = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)
SD15_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon",
)


# stabilityai/stable-diffusion-xl-base-1.0 (unet/, text_encoder_2/, vae/, scheduler/ config.json).
SDXL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SDXL_TEXT_2_CONFIG = dict(  # OpenCLIP ViT-bigG/14 text tower (with projection)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280,
)
SDXL_VAE_CONFIG = dict(SD15_VAE_CONFIG, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
)
# PixArt-alpha/PixArt-XL-2-512x512 (transformer/, text_encoder/ = google/t5-v1_1-xxl encoder, scheduler/).
PIXART_TRANSFORMER_CONFIG = dict(
    sample_size=64, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
    caption_channels=4096, cross_attention_dim=1152, in_channels=4, out_channels=8, norm_type="ada_norm_single",
    num_embeds_ada_norm=1000, attention_bias=True, activation_fn="gelu-approximate",
    norm_elementwise_affine=False, norm_eps=1e-6,
)
PIXART_T5_CONFIG = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
)
PIXART_SCHEDULER_CONFIG = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000)
# stabilityai/stable-diffusion-3.5-medium (transformer/, vae/, text_encoder/ and _2/, scheduler/ config.json): MMDiT-X,
# 24 blocks of width 1536, dual attention in blocks 0-12, RMS-normalised q/k, positions up to 384 x 384 patches.
SD35_MEDIUM_TRANSFORMER_CONFIG = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SD3_VAE_CONFIG = dict(SD15_VAE_CONFIG, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
                      use_quant_conv=False, use_post_quant_conv=False)
SD3_CLIP_L_CONFIG = SD15_TEXT_CONFIG  # CLIP ViT-L/14 with its 768-wide projection (CLIPTextModelWithProjection)
SD3_CLIP_G_CONFIG = SDXL_TEXT_2_CONFIG  # OpenCLIP ViT-bigG/14 with its 1280-wide projection
SD3_T5_CONFIG = PIXART_T5_CONFIG  # T5-XXL v1.1's encoder (text_encoder_3): Flan-T5-XXL's architecture
SD3_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
