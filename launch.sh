#!/usr/bin/env bash
# The paper's recipes, end to end. Usage:
#   bash launch.sh demo [sd15|sdxl|pixart] [--free_residual_steps 300 ...]   tiny CPU experiment, no downloads (ends with cfg_gap_closed=...)
#   bash launch.sh demo-eval [EXP_ID]          sample the demo (DICE/CFG/unguided), score with --smoke_test, table
#   bash launch.sh train  sd15|sdxl|pixart     train a sharpener on MS-COCO 2017 (paper preset)
#   bash launch.sh train-variants              DreamShaper, AbsoluteReality, Anime Pastel Dream (+ negative prompts)
#   bash launch.sh sample EXP_ID               DICE, CFG (w=5) and unguided on the 5k COCO prompts
#   bash launch.sh eval SAMPLE_FOLDER...       FID, CLIP score, aesthetic score -> results/results.jsonl
#   bash launch.sh table                       results/results.jsonl -> results/table.{md,csv}
#   bash launch.sh table1 sd15|sdxl|pixart     all of the above for one Table-1 block
# Environment: NGPUS (8), COCO (data/coco2017), FID_REF (data/coco_val2017_512.npz),
# ACCELERATE_ARGS (extra `accelerate launch` flags, e.g. multi-node: --num_machines 2 --machine_rank 0
# --main_process_ip HOST), PRECISION (bf16, as the authors), PYTHON (python).
set -euo pipefail
cd "$(dirname "$0")"

NGPUS=${NGPUS:-8}
COCO=${COCO:-data/coco2017}
FID_REF=${FID_REF:-data/coco_val2017_512.npz}
PRECISION=${PRECISION:-bf16}
PYTHON=${PYTHON:-python}
# shellcheck disable=SC2206
LAUNCH=(accelerate launch --num_processes="$NGPUS" --mixed_precision="$PRECISION" ${ACCELERATE_ARGS:-})

model_of() {  # family -> the paper's base model
  case "$1" in
    sd15) echo stable-diffusion-v1-5/stable-diffusion-v1-5 ;;
    sdxl) echo stabilityai/stable-diffusion-xl-base-1.0 ;;
    pixart) echo PixArt-alpha/PixArt-XL-2-512x512 ;;
    *) echo "unknown family '$1' (sd15, sdxl, pixart)" >&2; exit 2 ;;
  esac
}

train() {  # family [extra training args...]
  local family=$1; shift
  local extra=()
  [ "$family" = sdxl ] && extra=(--pretrained_vae_model_name_or_path=madebyollin/sdxl-vae-fp16-fix)
  "${LAUNCH[@]}" "train_${family}.py" --pretrained_model_name_or_path="$(model_of "$family")" \
    --train_data_dir="$COCO" --n_gpus="$NGPUS" "${extra[@]}" "$@"
}

latest_exp() { ls -d exps/[0-9][0-9][0-9][0-9][0-9]-* | tail -n 1 | xargs basename | cut -c1-5; }

sample_all() {  # experiment id: DICE + the two baselines of Table 1 on the 5k COCO prompts
  local exp=$1
  # u (negative prompt) defaults to what the sharpener was trained with; the baselines below use "".
  "${LAUNCH[@]}" sample.py --sharpener_path="$exp" --batch_gpu=16
  # alpha 0 leaves the embedding unchanged: the sharpener's base model itself, labelled unguided / cfg.
  "${LAUNCH[@]}" sample.py --sharpener_path="$exp" --alpha=0 --batch_gpu=16
  "${LAUNCH[@]}" sample.py --sharpener_path="$exp" --alpha=0 --cfg_scale=5 --batch_gpu=16
}

evaluate() {  # sample folders...
  for folder in "$@"; do
    "${LAUNCH[@]}" evaluation/fid.py calc --images="$folder" --ref="$FID_REF"
    "${LAUNCH[@]}" evaluation/clip_score.py calc --images="$folder"
    "${LAUNCH[@]}" evaluation/aesthetic.py calc --images="$folder"
  done
}

case "${1:-}" in
  demo)
    # No GPU, no downloads: the tiny embedded pipeline on CPU. Options: python -m dice.demo --help
    HF_HUB_OFFLINE=1 "$PYTHON" -m dice.demo "${@:2}" ;;
  demo-eval)
    # The latest exps/NNNNN-demo-* (or EXP_ID) end to end, no GPU needed; evaluators with random-weight stand-ins
    # (--smoke_test: meaningless numbers, plumbing only). Options: python -m dice.demo_eval --help
    HF_HUB_OFFLINE=1 "$PYTHON" -m dice.demo_eval "${@:2}" ;;
  train)
    train "${2:?family}" "${@:3}" ;;
  train-variants)
    # Paper 4.1: "Enhancers for SD15-based variants are trained with negative prompts." u is always one of
    # them (3.2: they "replace all null text embeddings"); the checkpoint records the list, and `sample`
    # below draws each image's u from it by default (README "Negative prompts").
    for model in Lykon/DreamShaper digiplay/AbsoluteReality_v1.8.1 Lykon/AnimePastelDream; do
      "${LAUNCH[@]}" train_sd15.py --pretrained_model_name_or_path="$model" --train_data_dir="$COCO" \
        --n_gpus="$NGPUS" --negative_prompts=default "${@:2}"
    done ;;
  sample)
    sample_all "${2:?experiment id}" ;;
  eval)
    evaluate "${@:2}" ;;
  table)
    "$PYTHON" evaluation/results.py --results results/results.jsonl --out results/table ;;
  table1)
    train "${2:?family}"
    exp=$(latest_exp)
    sample_all "$exp"
    evaluate samples/*
    "$PYTHON" evaluation/results.py --results results/results.jsonl --out results/table ;;
  *)
    sed -n '2,13p' "$0"; exit 2 ;;
esac
