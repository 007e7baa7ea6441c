"""FLOPs of the pieces of a DICE training step and of a generation, per image, at the real resolutions.

Counted with torch.utils.flop_counter.FlopCounterMode (matrix multiplications, convolutions and
attention, forward and backward; 2 FLOPs per multiply-add; element-wise work left out) on the meta
device: the full-size architectures of benchmarks/common.py are built without memory and run on
shapes only, so this takes seconds on any machine and needs no GPU.

Per image, for each family at its training resolution: the denoiser forward; the denoiser forward +
backward to the text embedding with frozen weights (the student: input gradients only); the VAE
encoder and decoder; the text encoder(s) on one prompt; the sharpener. From them: our update (teacher
on cond + uncond, student forward + backward, the text encoder but for PixArt's cached T5; no VAE:
latent cache), the authors' (+ VAE encoder, + text encoder), and the FLOP bound of DICE / CFG throughput for a 20-step generation (both encode
the prompt and the negative prompt; CFG evaluates the denoiser twice per step, DICE once plus the
sharpener), without and with the VAE decode.

    python benchmarks/flops.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402

RESOLUTIONS = {"sd15-full": 512, "sdxl-full": 1024, "pixart-full": 512}


def family_flops(setup: str, resolution: int, steps: int) -> dict:
    from dice.adapters import Conditioning, adapter_class
    from dice.sharpener import Sharpener

    pipe = common.build_full_pipeline(setup, "meta")
    adapter = adapter_class(common.FAMILIES[setup])(pipe, setup)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    meta = dict(device="meta")
    latent = resolution // adapter.vae_scale_factor
    x_t, t = torch.randn(1, adapter.latent_channels, latent, latent, **meta), torch.zeros(1, dtype=torch.long, **meta)
    embeds = torch.randn(1, adapter.num_tokens, adapter.text_dim, requires_grad=True, **meta)
    pooled = torch.randn(1, pipe.text_encoder_2.config.projection_dim, **meta) if setup == "sdxl-full" else None
    mask = torch.ones(1, adapter.num_tokens, dtype=torch.long, **meta) if setup == "pixart-full" else None
    cond, sizes = Conditioning(embeds, pooled, mask), torch.tensor([[resolution, resolution, 0, 0]], **meta)
    token_ids = torch.zeros(1, adapter.num_tokens, dtype=torch.long, **meta)
    text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if setup == "sdxl-full" else [])
    sharpener = Sharpener(adapter.text_dim).to("meta")

    def count(fn) -> int:
        return common.count_flops(fn)[0]

    with torch.no_grad():
        forward = count(lambda: adapter.predict_noise(x_t, t, cond, sizes))
        vae_encoder = count(lambda: pipe.vae.encode(torch.randn(1, 3, resolution, resolution, **meta)))
        vae_decoder = count(lambda: pipe.vae.decode(torch.randn(1, adapter.latent_channels, latent, latent, **meta)))
        text = sum(count(lambda encoder=encoder: encoder(token_ids)) for encoder in text_encoders)
        sharpen = count(lambda: sharpener(embeds, embeds))
    student = count(lambda: adapter.predict_noise(x_t, t, cond, sizes).sum().backward())

    # Ours reads latents from the cache; PixArt's T5 from the text-embedding cache too. The authors' step
    # runs both encoders every step. (The sharpener, ~1e-4 of either, is left out of both.)
    ours = 2 * forward + student + (0 if setup == "pixart-full" else text)
    authors = 2 * forward + student + text + vae_encoder
    cfg, dice = 2 * steps * forward + 2 * text, steps * forward + 2 * text + sharpen
    gflops = lambda x: round(x / 1e9, 1)  # noqa: E731
    return {
        "resolution": resolution,
        "gflops_per_image": {
            "denoiser_forward": gflops(forward), "student_forward_backward": gflops(student),
            "vae_encoder": gflops(vae_encoder), "vae_decoder": gflops(vae_decoder), "text_encoders": gflops(text),
            "sharpener": round(sharpen / 1e9, 3),
        },
        "training_update_gflops_per_image": {"ours_latent_cache": gflops(ours), "authors": gflops(authors),
                                             "authors_over_ours": round(authors / ours, 3),
                                             "vae_encoder_share_of_authors": round(vae_encoder / authors, 3),
                                             "text_share_of_authors": round(text / authors, 4)},
        f"generation_{steps}_steps_gflops_per_image": {
            "cfg": gflops(cfg), "dice": gflops(dice), "dice_over_cfg_bound_latent": round(cfg / dice, 3),
            "dice_over_cfg_bound_with_decode": round((cfg + vae_decoder) / (dice + vae_decoder), 3),
            "sharpener_share_of_dice": round(sharpen / (dice + vae_decoder), 7),
        },
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument("--out", default=None, help="extra folder for the JSON")
    args = p.parse_args(argv)
    result = {
        "benchmark": "flops",
        "what": "FlopCounterMode on the meta device, per image (see benchmarks/flops.py)",
        **{k: v for k, v in common.environment(torch.device("cpu")).items() if k != "device"},
        "families": {setup: family_flops(setup, resolution, args.steps) for setup, resolution in RESOLUTIONS.items()},
    }
    common.write_result("flops", "full", torch.device("cpu"), result, args.out)
    return result


if __name__ == "__main__":
    main()
