"""Train a DICE sharpener for PixArt-Sigma (1024: PixArt-Sigma-XL-2-1024-MS; 512: its 512 transformer in that pipeline).

    accelerate launch --num_processes=8 train_pixart_sigma.py \\
        --pretrained_model_name_or_path=PixArt-alpha/PixArt-Sigma-XL-2-1024-MS \\
        --train_data_dir=data/coco2017 --text_embedding_cache=data/t5-cache-sigma --mixed_precision=bf16

For the 512 model add --pretrained_transformer_model_name_or_path=PixArt-alpha/PixArt-Sigma-XL-2-512-MS
--preset=paper-512. Options are listed by --help; unset ones come from --preset (the paper's recipe at 1024 px).
--method gd trains the guidance-distillation baseline instead (no PnP for PixArt).
"""
from dice.errors import exit_on_user_error
from dice.training import main

if __name__ == "__main__":
    with exit_on_user_error():
        main("pixart-sigma")
