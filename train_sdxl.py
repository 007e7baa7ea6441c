"""Train a DICE sharpener for Stable Diffusion XL.

    accelerate launch --num_processes=8 train_sdxl.py \\
        --pretrained_model_name_or_path=stabilityai/stable-diffusion-xl-base-1.0 \\
        --pretrained_vae_model_name_or_path=madebyollin/sdxl-vae-fp16-fix \\
        --train_data_dir=data/coco2017 --preset=authors --mixed_precision=bf16

Options are listed by --help; unset ones come from --preset (paper settings by default).
--method gd|pnp trains Table 1's baselines instead (guidance distillation, the PnP guide network).
"""
from dice.errors import exit_on_user_error
from dice.training import main

if __name__ == "__main__":
    with exit_on_user_error():
        main("sdxl")
