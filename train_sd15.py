"""Train a DICE sharpener for Stable Diffusion 1.5 or any SD1.5-architecture model.

    accelerate launch --num_processes=8 train_sd15.py \\
        --pretrained_model_name_or_path=stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --train_data_dir=data/coco2017

Options are listed by --help; unset ones come from --preset (paper settings by default).
--method gd|pnp trains Table 1's baselines instead (guidance distillation, the PnP guide network).
"""
from dice.errors import exit_on_user_error
from dice.training import main

if __name__ == "__main__":
    with exit_on_user_error():
        main("sd15")
