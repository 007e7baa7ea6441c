#!/usr/bin/env bash
# The paper's recipes, end to end. Usage:
#   bash launch.sh demo [toy|sd15|sdxl|pixart] [options]   CPU, no downloads: DICE on the trained shapes world (default),
#                                              or a random-weight plumbing demo of one family (ends with cfg_gap_closed=...)
#   bash launch.sh demo-eval [EXP_ID]          sample the demo (DICE/CFG/unguided), score with --smoke_test, table
#   bash launch.sh train  sd15|sdxl|pixart     train a sharpener on MS-COCO 2017 (paper preset)
#   bash launch.sh train-variants              DreamShaper, AbsoluteReality, Anime Pastel Dream (+ negative prompts)
#   bash launch.sh sample EXP_ID               DICE, CFG (w=5) and unguided on the 5k COCO prompts
#   bash launch.sh eval SAMPLE_FOLDER...       FID, CLIP score, aesthetic score -> results/results.jsonl
#   bash launch.sh table                       results/results.jsonl -> results/table.{md,csv}
#   bash launch.sh table1 toy|sd15|dreamshaper|sdxl|pixart
#                                              one block of Table 1, all six rows: trains DICE, GD and PnP, samples
#                                              w=5, w=1, Scaling, GD, PnP, DICE, scores them -> results/table1-<block>.{md,csv,json}
#                                              (toy: the shapes world on the CPU, no downloads; a rerun resumes)
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

run_of() {  # desc -> the newest exps/NNNNN-<desc>, or nothing
  ls -d exps/[0-9][0-9][0-9][0-9][0-9]-"$1" 2>/dev/null | tail -n 1 || true  # none yet: nothing
}

train_once() {  # desc training-command...: train into exps/NNNNN-<desc>; a rerun continues (or keeps) that run
  local desc=$1 run; shift
  run=$(run_of "$desc")
  if [ -n "$run" ]; then "$@" --resume_from_checkpoint=latest --experiment="$run"; else "$@" --desc="$desc"; fi
}

table1() {  # block: the six rows of one Table-1 block -> results/table1-<block>.{md,csv,json}
  local block=$1 out=samples/table1-$1 results=results/table1-$1.jsonl
  local family=sd15 model vae=() dice_extra=() methods=(dice gd pnp) train sample base
  case "$block" in
    toy) model=dice/assets/shapes_world/shapes-world ;;
    sd15) model=$(model_of sd15) ;;
    dreamshaper) model=Lykon/DreamShaper; dice_extra=(--negative_prompts=default) ;;  # paper 4.1: variants with negatives
    sdxl) family=sdxl; model=$(model_of sdxl); vae=(--pretrained_vae_model_name_or_path=madebyollin/sdxl-vae-fp16-fix) ;;
    pixart) family=pixart; model=$(model_of pixart); methods=(dice gd)
      echo "PixArt-alpha: no PnP row (diffusers has no PixArt ControlNet; README 'Table 1's other rows')" >&2 ;;
    *) echo "error: unknown Table-1 block '$block'. Use toy, sd15, dreamshaper, sdxl or pixart" >&2; exit 2 ;;
  esac
  local s  # Scaling's s: the paper's per model (dice/presets.py EMBEDDING_SCALES)
  s=$("$PYTHON" -c "from dice.presets import EMBEDDING_SCALES; print(EMBEDDING_SCALES['${block/toy/shapes-world}'])")
  if [ "$block" = toy ]; then  # one CPU process, the world's data, held-out prompts and evaluator
    local data=data/shapes_world-train-4000 prompts=data/shapes_world-prompts-256.jsonl
    [ -f "$data/metadata.jsonl" ] || "$PYTHON" -m dice.shapes_world data --out "$data" --num_images 4000
    [ -f "$prompts" ] || "$PYTHON" -m dice.shapes_world prompts --out "$prompts" --num_prompts 256
    train=("$PYTHON" train_sd15.py --pretrained_model_name_or_path="$model" --train_data_dir="$data" --preset=toy
           --dataloader_num_workers=0 --validation_prompts "a red circle and a blue square" "a blue cross and a red triangle")
    sample=("$PYTHON" sample.py --prompts="$prompts" --outdir="$out" --batch_gpu=64)
    base=(--model_name=shapes-world)
  else
    train=("${LAUNCH[@]}" "train_$family.py" --pretrained_model_name_or_path="$model" --train_data_dir="$COCO"
           --n_gpus="$NGPUS" "${vae[@]}")
    sample=("${LAUNCH[@]}" sample.py --outdir="$out" --batch_gpu=16)
    base=(--model_name="$block" "${vae[@]}")
  fi
  for method in "${methods[@]}"; do
    extra=(); [ "$method" = dice ] && extra=("${dice_extra[@]}")
    train_once "table1-$block-$method" "${train[@]}" --method="$method" "${extra[@]}"
  done
  "${sample[@]}" "${base[@]}" --cfg_scale=5
  "${sample[@]}" "${base[@]}"
  "${sample[@]}" "${base[@]}" --embedding_scale="$s"
  local folders=("$out"/*-cfg-w5-20steps-* "$out"/*-unguided-20steps-* "$out"/*-scaling-s"$s"-20steps-*) run
  for method in "${methods[@]}"; do
    run=$(run_of "table1-$block-$method")
    "${sample[@]}" --model_path="$run"
    folders+=("$out"/*-"$method"-"$(basename "$run" | cut -c1-5)"-*)
  done
  rm -f "$results"  # this run's six folders only (a folder of an earlier experiment stays out of the table)
  for folder in "${folders[@]}"; do
    if [ "$block" = toy ]; then
      "$PYTHON" evaluation/shapes_world.py calc --images="$folder" --results="$results"
    else
      "${LAUNCH[@]}" evaluation/fid.py calc --images="$folder" --ref="$FID_REF" --results="$results"
      "${LAUNCH[@]}" evaluation/clip_score.py calc --images="$folder" --results="$results"
      "${LAUNCH[@]}" evaluation/aesthetic.py calc --images="$folder" --results="$results"
    fi
  done
  "$PYTHON" evaluation/results.py --results "$results" --out "results/table1-$block"
}


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
    # No GPU, no downloads: the shipped shapes-world model (or a tiny random pipeline) on CPU. Options: python -m dice.demo --help
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
    block=${2:?block: toy, sd15, dreamshaper, sdxl or pixart}
    if [ "$block" = toy ]; then OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 table1 toy; else table1 "$block"; fi ;;
  *)
    sed -n '2,17p' "$0"; exit 2 ;;
esac
