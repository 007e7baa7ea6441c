"""Train a DICE sharpener for Stable Diffusion 3 / 3.5 (flow matching; SD3.5 Medium / Large, SD3 Medium).

    accelerate launch --num_processes=8 train_sd3.py \\
        --pretrained_model_name_or_path=stabilityai/stable-diffusion-3.5-medium \\
        --train_data_dir=data/coco2017 --mixed_precision=bf16 --gradient_checkpointing

The teacher's guidance scale is the model card's (SD3.5 Medium 4.5, Large 3.5, SD3 Medium 7) unless
--guidance_scale is given; --flow_sigmas picks the training noise levels, --max_sequence_length the T5 tokens.
Options are listed by --help; unset ones come from --preset (the paper's recipe at 1024 px by default).
--method gd trains the guidance-distillation baseline instead (no PnP for SD3).
"""
from dice.errors import exit_on_user_error
from dice.training import main

if __name__ == "__main__":
    with exit_on_user_error():
        main("sd3")
