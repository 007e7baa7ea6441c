"""Sample images unguided, with CFG, Scaling, DICE, DICE + CFG, GD or PnP (one folder per configuration).

    python sample.py --sharpener_path 3 --prompt "a photo of a cat"         # DICE, experiment 00003
    accelerate launch --num_processes=8 sample.py --sharpener_path 3         # the 5k COCO prompts
    python sample.py --model_name sd15 --cfg_scale 5                         # the CFG baseline
    python sample.py --model_name sd15 --embedding_scale 1.2                 # Scaling (training-free)
    python sample.py --model_path 5                                          # GD or PnP experiment 00005, ω = 5

The base model comes from the sharpener's checkpoint unless --pretrained_model_name_or_path is given.
Reruns only generate missing images. Output: <outdir>/<configuration>/{00000.png, manifest.jsonl,
sampling_options.json}; the evaluators read those folders.
"""
from dice.errors import exit_on_user_error
from dice.sample_cli import main

if __name__ == "__main__":
    with exit_on_user_error():
        main()
