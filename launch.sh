#!/usr/bin/env bash
# The paper's recipes, end to end. Usage:
#   bash launch.sh demo [toy|sd15|sdxl|pixart] [options]   CPU, no downloads: DICE on the trained shapes world (default),
#                                              or a random-weight plumbing demo of one family (ends with cfg_gap_closed=...)
#   bash launch.sh demo-eval [EXP_ID]          sample the demo (DICE/CFG/unguided), score with --smoke_test, table
#   bash launch.sh train  sd15|sdxl|pixart     train a sharpener on MS-COCO 2017 (paper preset)
#   bash launch.sh train-variants              DreamShaper, AbsoluteReality, Anime Pastel Dream (+ negative prompts)
#   bash launch.sh sample EXP_ID               DICE, CFG (w=5) and unguided on the 5k COCO prompts
#   bash launch.sh eval SAMPLE_FOLDER...       FID, CLIP score, aesthetic score -> results/results.jsonl
#   bash launch.sh table                       results/results.jsonl -> results/table.{md,csv,json,png}
#   bash launch.sh table1 toy|sd15|dreamshaper|sdxl|pixart
#                                              one block of Table 1, all six rows: trains DICE, GD and PnP, samples
#                                              w=5, w=1, Scaling, GD, PnP, DICE, scores them -> results/table1-<block>.{md,csv,json,png}
#                                              (toy: the shapes world on the CPU, no downloads; a rerun resumes)
#   bash launch.sh ref                         FID reference statistics of COCO val2017 (512 px) -> $FID_REF
#   bash launch.sh figures EXP_ID|toy          every figure of the paper for one experiment -> results/figures/<exp>/
#                                              (toy: trains and analyses a sharpener of the shapes world, CPU, no downloads)
# Environment: NGPUS (8), COCO (data/coco2017), FID_REF (data/coco_val2017_512.npz),
# ACCELERATE_ARGS (extra `accelerate launch` flags, e.g. multi-node: --num_machines 2 --machine_rank 0
# --main_process_ip HOST), PRECISION (bf16, as the authors), PYTHON (python),
# PROMPT_SETS (coco5k; add "hps-anime hps-concept-art hps-paintings hps-photo drawbench" for Table 1's HPS / DrawBench columns).
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

table1() {  # block: the six rows of one Table-1 block -> results/table1-<block>.{md,csv,json,png}
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
  [ "$block" = toy ] || ensure_ref  # before training: hours of training must not end at a missing reference
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
  # shellcheck disable=SC2206
  local sets=(${PROMPT_SETS:-coco5k}) set run
  [ "$block" = toy ] && sets=("")  # the world's held-out prompts (in $sample)
  for set in "${sets[@]}"; do
    local on=(); [ -n "$set" ] && on=(--prompts="$set")
    "${sample[@]}" "${on[@]}" "${base[@]}" --cfg_scale=5
    "${sample[@]}" "${on[@]}" "${base[@]}"
    "${sample[@]}" "${on[@]}" "${base[@]}" --embedding_scale="$s"
    for method in "${methods[@]}"; do "${sample[@]}" "${on[@]}" --model_path="$(run_of "table1-$block-$method")"; done
  done
  local folders=("$out"/*-cfg-w5-20steps-* "$out"/*-unguided-20steps-* "$out"/*-scaling-s"$s"-20steps-*)
  for method in "${methods[@]}"; do
    run=$(run_of "table1-$block-$method")
    folders+=("$out"/*-"$method"-"$(basename "$run" | cut -c1-5)"-*)
  done
  rm -f "$results"  # this run's folders only (a folder of an earlier experiment stays out of the table)
  if [ "$block" = toy ]; then
    for folder in "${folders[@]}"; do "$PYTHON" evaluation/shapes_world.py calc --images="$folder" --results="$results"; done
  else
    RESULTS=$results evaluate "${folders[@]}"
  fi
  "$PYTHON" evaluation/results.py --results "$results" --out "results/table1-$block"
}


sample_all() {  # experiment id: DICE + the two baselines of Table 1 on each of PROMPT_SETS (default: the 5k COCO prompts)
  local exp=$1 set
  for set in ${PROMPT_SETS:-coco5k}; do
    # u (negative prompt) defaults to what the sharpener was trained with; the baselines below use "".
    "${LAUNCH[@]}" sample.py --sharpener_path="$exp" --batch_gpu=16 --prompts="$set"
    # alpha 0 leaves the embedding unchanged: the sharpener's base model itself, labelled unguided / cfg.
    "${LAUNCH[@]}" sample.py --sharpener_path="$exp" --alpha=0 --batch_gpu=16 --prompts="$set"
    "${LAUNCH[@]}" sample.py --sharpener_path="$exp" --alpha=0 --cfg_scale=5 --batch_gpu=16 --prompts="$set"
  done
}

ref() {  # the FID reference statistics, as the authors made them: val2017 centre-cropped and resized to 512
  if [ ! -d "$COCO/val2017" ]; then
    echo "error: $COCO/val2017 not found, so the FID reference $FID_REF cannot be built. Put MS-COCO 2017 under COCO=$COCO, or give FID_REF=<existing .npz>" >&2
    exit 2
  fi
  "${LAUNCH[@]}" evaluation/fid.py ref --data="$COCO/val2017" --dest="$FID_REF" --center_crop_resize=512
}

ensure_ref() {  # before any training: a missing reference is built (or refused) now, not after hours of training
  [ -f "$FID_REF" ] || ref
}

figures_toy() {  # the shapes world: train a sharpener (checkpoints every 150 updates) and run every analysis on it
  local data=data/shapes_world-train-4000 prompts=data/shapes_world-prompts-1000.jsonl out=results/figures/toy
  local model=dice/assets/shapes_world/shapes-world single=data/shapes-world.safetensors
  local train=(train_sd15.py --pretrained_model_name_or_path="$model" --train_data_dir="$data" --preset=toy --output_dir=exps
               --dataloader_num_workers=0)
  [ -f "$data/metadata.jsonl" ] || "$PYTHON" -m dice.shapes_world data --out "$data" --num_images 4000
  [ -f "$prompts" ] || "$PYTHON" -m dice.shapes_world prompts --out "$prompts" --num_prompts 1000
  local run
  run=$(ls -d exps/[0-9][0-9][0-9][0-9][0-9]-figures-toy 2>/dev/null | tail -n 1)
  if [ -z "$run" ] || [ ! -d "$run/checkpoint-600" ]; then
    [ -n "$run" ] && resume=(--resume_from_checkpoint=latest --experiment="$run") || resume=()
    "$PYTHON" "${train[@]}" --checkpointing_steps=150 --desc=figures-toy "${resume[@]}" \
      --validation_prompts "a red circle and a blue square" "a yellow triangle next to a green cross"
    run=$(ls -d exps/[0-9][0-9][0-9][0-9][0-9]-figures-toy | tail -n 1)
  fi
  # Sweeps: TOY_PROMPTS held-out prompts (half unseen combinations), scored by the world's evaluator.
  local sweep=(--out="$out" --prompts="$prompts" --num_images="${TOY_PROMPTS:-128}" --metrics=world --batch_gpu=64)
  "$PYTHON" figures/quality_vs_nfe.py "${sweep[@]}" --sharpener_path="$run" --nfe 4 8 12 20 40
  "$PYTHON" figures/alpha_sweep.py "${sweep[@]}" --sharpener_path="$run" --alphas 0 0.5 1 1.5 2
  "$PYTHON" figures/dice_cfg_sweep.py "${sweep[@]}" --sharpener_path="$run" --cfg_scales 1 2 5
  "$PYTHON" figures/training_curve.py "${sweep[@]}" --experiment="$run"
  "$PYTHON" figures/sharpener_structure.py "${sweep[@]}" --experiments "$run" --train 64x4 \
    --train_args="${train[*]:1} --validation_prompts"
  [ -f "$single" ] || "$PYTHON" -m dice.single_file "$model" "$single"
  "$PYTHON" figures/transfer_matrix.py "${sweep[@]}" --sharpeners "$run" "$(ls -d exps/[0-9]*-structure-64x4 | tail -n 1)" \
    --models "$model" "$single" --single_file_config="$model"
  local inside=(--sharpener_path="$run" --out="$out")
  "$PYTHON" figures/semantic_padding.py "${inside[@]}" --prompts="$prompts" --num_prompts=1000
  "$PYTHON" figures/embedding_pca.py "${inside[@]}" --prompts="$prompts" --num_prompts=1000
  "$PYTHON" figures/attention_maps.py "${inside[@]}" --prompt="a red circle and a blue square"
  "$PYTHON" figures/prompt_optimisation.py --pretrained_model_name_or_path=shapes-world --out="$out" \
    --prompt="a red circle and a blue square" --fit_steps=300
  "$PYTHON" evaluation/results.py --results "$out/results.jsonl" --out "$out/table"
}

figures() {  # experiment id: the paper's settings (5k COCO prompts, 20 steps, FID/CLIP/AS; 1,000 prompts for the embeddings)
  local exp=$1 out=results/figures/$1
  ensure_ref
  local sweep=(--out="$out" --prompts="${PROMPTS:-coco5k}" --metrics=paper --ref="$FID_REF" --batch_gpu=16)
  "$PYTHON" figures/quality_vs_nfe.py "${sweep[@]}" --sharpener_path="$exp"
  "$PYTHON" figures/alpha_sweep.py "${sweep[@]}" --sharpener_path="$exp"
  "$PYTHON" figures/dice_cfg_sweep.py "${sweep[@]}" --sharpener_path="$exp"
  "$PYTHON" figures/training_curve.py "${sweep[@]}" --experiment="$exp"
  # A.1 and Fig. 6 compare several sharpeners: STRUCTURE_EXPS (runs trained with --sharpener_inner_dim/--sharpener_heads),
  # TRANSFER_SHARPENERS and TRANSFER_MODELS (e.g. the three variants' runs and models; single files need SINGLE_FILE_CONFIG).
  # shellcheck disable=SC2086
  [ -n "${STRUCTURE_EXPS:-}" ] && "$PYTHON" figures/sharpener_structure.py "${sweep[@]}" --experiments "$exp" $STRUCTURE_EXPS
  # shellcheck disable=SC2086
  [ -n "${TRANSFER_MODELS:-}" ] && "$PYTHON" figures/transfer_matrix.py "${sweep[@]}" --sharpeners "$exp" ${TRANSFER_SHARPENERS:-} \
    --models $TRANSFER_MODELS ${SINGLE_FILE_CONFIG:+--single_file_config="$SINGLE_FILE_CONFIG"}
  local inside=(--sharpener_path="$exp" --out="$out")
  "$PYTHON" figures/semantic_padding.py "${inside[@]}" --prompts=coco5k --num_prompts=1000
  "$PYTHON" figures/embedding_pca.py "${inside[@]}" --prompts=coco5k --num_prompts=1000
  "$PYTHON" figures/attention_maps.py "${inside[@]}"
  "$PYTHON" figures/prompt_optimisation.py --sharpener_path="$exp" --out="$out"
  "$PYTHON" evaluation/results.py --results "$out/results.jsonl" --out "$out/table"
}

evaluate() {  # sample folders... -> $RESULTS (HPS v2.1 for the HPS / DrawBench sets, FID / CLIP / AS otherwise)
  # One process per metric scores all its folders: each metric network loads once, not once per folder.
  local into=(--results="${RESULTS:-results/results.jsonl}") hps=() coco=() folder
  for folder in "$@"; do
    if grep -qE '"prompts": "(hps-|drawbench)' "$folder/sampling_options.json" 2>/dev/null; then hps+=("$folder"); else coco+=("$folder"); fi
  done
  if [ ${#hps[@]} -gt 0 ]; then
    "${LAUNCH[@]}" evaluation/hps.py calc --images "${hps[@]}" "${into[@]}"
  fi
  if [ ${#coco[@]} -gt 0 ]; then
    "${LAUNCH[@]}" evaluation/fid.py calc --images "${coco[@]}" --ref="$FID_REF" "${into[@]}"
    "${LAUNCH[@]}" evaluation/clip_score.py calc --images "${coco[@]}" "${into[@]}"
    "${LAUNCH[@]}" evaluation/aesthetic.py calc --images "${coco[@]}" "${into[@]}"
  fi
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
  ref)
    ref ;;
  figures)
    if [ "${2:?experiment id or toy}" = toy ]; then OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 figures_toy; else figures "$2"; fi ;;
  table1)
    block=${2:?block: toy, sd15, dreamshaper, sdxl or pixart}
    if [ "$block" = toy ]; then OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 table1 toy; else table1 "$block"; fi ;;
  *)
    sed -n '2,21p' "$0"; exit 2 ;;
esac
