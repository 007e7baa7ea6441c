"""Train a DICE sharpener for PixArt-alpha (512: PixArt-XL-2-512x512; 1024: PixArt-XL-2-1024-MS).

    accelerate launch --num_processes=8 train_pixart.py \\
        --pretrained_model_name_or_path=PixArt-alpha/PixArt-XL-2-512x512 \\
        --train_data_dir=data/coco2017 --text_embedding_cache=data/t5-cache-512 --mixed_precision=bf16

For the 1024 model add --preset=paper-1024 (or --resolution=1024). Options are listed by --help;
unset ones come from --preset (paper settings by default).
--method gd trains Table 1's guidance-distillation baseline instead (no PnP for PixArt).
"""
from dice.errors import exit_on_user_error
from dice.training import main

if __name__ == "__main__":
    with exit_on_user_error():
        main("pixart")
