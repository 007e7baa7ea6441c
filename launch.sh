#!/usr/bin/env bash
# The paper's recipes, end to end. Usage:
#   bash launch.sh demo [toy|shapes-flow|sd15|sdxl|pixart|pixart-sigma|sd3] [options]   CPU, no downloads: DICE on the trained shapes
#                                              world (default), on its flow-matching twin (shapes-flow, SD3 architecture),
#                                              or a random-weight plumbing demo of one family (ends with cfg_gap_closed=...)
#   bash launch.sh demo-eval [EXP_ID]          sample the demo (DICE/CFG/unguided), score with --smoke_test, table
#   bash launch.sh train  sd15|sdxl|pixart     train a sharpener on MS-COCO 2017 (the preset of Table 1's block)
#   bash launch.sh train  sd3.5-medium|sd3.5-large|sd3-medium|pixart-sigma|pixart-sigma-512
#                                              the families after the paper: its recipe at the model's size (SD3: the
#                                              model card's w), same COCO
#   bash launch.sh train-variants              DreamShaper, AbsoluteReality, Anime Pastel Dream (paper 4.1: + negative prompts)
#   bash launch.sh sample EXP_ID               DICE, CFG (w=5) and unguided on the 5k COCO prompts
#   bash launch.sh eval SAMPLE_FOLDER...       FID, CLIP score, aesthetic score -> results/results.jsonl
#   bash launch.sh table                       results/results.jsonl -> results/table.{md,csv,json,png}
#   bash launch.sh table1 toy|toy-flow|sd15|dreamshaper|sdxl|pixart
#                                              one block of Table 1, all six rows: trains DICE, GD and PnP, samples
#                                              w=5, w=1, Scaling, GD, PnP, DICE, scores them -> results/table1-<block>.{md,csv,json,png}
#                                              (toy: the shapes world on the CPU, no downloads; toy-flow: its flow-matching
#                                              twin, SD3 architecture, w=3, no PnP; a rerun resumes)
#   bash launch.sh ref                         FID reference statistics of COCO val2017 (512 px) -> $FID_REF
#   bash launch.sh figures EXP_ID|toy          every figure of the paper for one experiment -> results/figures/<exp>/
#                                              (toy: trains and analyses a sharpener of the shapes world, CPU, no downloads)
#   bash launch.sh rehearse [RECIPE...]        every recipe above on tiny random models of each family, a tiny COCO and
#                                              smoke-test metrics, on the CPU: what would break on a cluster, in minutes
#                                              (python -m dice.testkit.rehearsal --help)
# Environment: NGPUS (8), COCO (data/coco2017), FID_REF (data/coco_val2017_512.npz),
# ACCELERATE_ARGS (extra `accelerate launch` flags, e.g. multi-node: --num_machines 2 --machine_rank 0
# --main_process_ip HOST), PRECISION (bf16, as the authors), PYTHON (python: one with requirements.txt installed),
# PROMPT_SETS (coco5k; add "hps-anime hps-concept-art hps-paintings hps-photo drawbench" for Table 1's HPS / DrawBench columns),
# WORKDIR (where exps/, samples/, results/ and data/ are: this folder), TRAIN_ARGS (train_*.py options added last to
# every training command, e.g. --latent_cache DIR), PROMPT_LIMIT (only the first N prompts of every prompt set; default
# all, the paper's protocol), SMOKE_TEST (1: the evaluators' random-weight stand-ins, meaningless numbers), MODELS_DIR
# (a folder with a stand-in for each model name of dice/paper.py, as the rehearsal writes), TOY_PROMPTS (held-out
# prompts of the toy recipes: 256 for table1, 128 for figures).
set -euo pipefail
REPO=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # `python -m dice...` from any WORKDIR

NGPUS=${NGPUS:-8}
COCO=${COCO:-data/coco2017}
FID_REF=${FID_REF:-data/coco_val2017_512.npz}
PRECISION=${PRECISION:-bf16}
PYTHON=${PYTHON:-python}
# accelerate of $PYTHON itself (not whichever `accelerate` is first on PATH): PYTHON=.venv/bin/python works unactivated.
# --quiet: a script's one-line error is not followed by the launcher's own traceback.
# shellcheck disable=SC2206
LAUNCH=("$PYTHON" -m accelerate.commands.launch --quiet --num_processes="$NGPUS" --mixed_precision="$PRECISION" ${ACCELERATE_ARGS:-})
read -r -a TRAIN_EXTRA <<< "${TRAIN_ARGS:-}"
LIMIT=(${PROMPT_LIMIT:+--num_images="$PROMPT_LIMIT"})
SMOKE=(${SMOKE_TEST:+--smoke_test})

check_python() {  # $PYTHON must hold the requirements: one line saying how to get there, not a Python traceback
  local missing
  if ! missing=$("$PYTHON" -c 'import importlib.util as u
print(" ".join(m for m in ("torch", "diffusers", "transformers", "accelerate") if u.find_spec(m) is None))' 2>/dev/null); then
    echo "error: PYTHON=$PYTHON is not a Python that runs here. Activate the virtual environment (. .venv/bin/activate) or set PYTHON=.venv/bin/python" >&2
    exit 2
  fi
  if [ -n "$missing" ]; then
    echo "error: $PYTHON has no ${missing// /, } (not the repository's virtual environment). Activate it (. .venv/bin/activate) or set PYTHON=.venv/bin/python; to make it: python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt" >&2
    exit 2
  fi
}

model_of() {  # model name (dice/paper.py, dice/presets.py) -> its hub id, or its stand-in under MODELS_DIR
  if [ -n "${MODELS_DIR:-}" ]; then echo "$MODELS_DIR/$1"; else "$PYTHON" -m dice.recipes model "$1"; fi
}

transformer_of() {  # model name -> the hub id of its replacement transformer (PixArt-Sigma 512), or its stand-in
  if [ -n "${MODELS_DIR:-}" ]; then echo "$MODELS_DIR/$1"; else "$PYTHON" -m dice.recipes transformer "$1"; fi
}

train() {  # model name (a family of the paper, or a model after it) [extra training args...]
  local name=$1 family=$1 model vae_model transformer extra=(); shift
  case "$name" in
    sd15|pixart|pixart-sigma) ;;
    sdxl) vae_model=$(model_of sdxl-vae); extra=(--pretrained_vae_model_name_or_path="$vae_model") ;;
    pixart-sigma-512) family=pixart-sigma; name=pixart-sigma; transformer=$(transformer_of pixart-sigma-512)
      extra=(--pretrained_transformer_model_name_or_path="$transformer" --preset=paper-512) ;;
    sd3.5-medium|sd3.5-large|sd3-medium) family=sd3 ;;
    *) echo "error: unknown model '$name'. Use sd15, sdxl, pixart, sd3.5-medium, sd3.5-large, sd3-medium, pixart-sigma or pixart-sigma-512" >&2; exit 2 ;;
  esac
  model=$(model_of "$name")  # assigned, not inline: a failed lookup stops the script
  local preset=()
  case "$name" in
    sd15|sdxl|pixart)  # the run behind Table 1's block (dice/paper.py TABLE1_PRESETS)
      preset=(--preset="$("$PYTHON" -m dice.recipes table1-preset "$name")")
      echo "train $name: ${preset[0]}, the run behind Table 1's $name block (docs/authors_code.md); override with" \
        "TRAIN_ARGS=--preset=..." >&2 ;;
  esac
  "${LAUNCH[@]}" "$REPO/train_${family//-/_}.py" --pretrained_model_name_or_path="$model" \
    --train_data_dir="$COCO" --n_gpus="$NGPUS" "${preset[@]}" "${extra[@]}" "$@" "${TRAIN_EXTRA[@]}"
}

run_of() {  # desc -> the newest exps/NNNNN-<desc>, or nothing
  ls -d exps/[0-9][0-9][0-9][0-9][0-9]-"$1" 2>/dev/null | tail -n 1 || true  # none yet: nothing
}

train_once() {  # desc training-command...: train into exps/NNNNN-<desc>; a rerun continues (or keeps) that run
  local desc=$1 run; shift
  run=$(run_of "$desc")
  if [ -n "$run" ]; then
    "$@" "${TRAIN_EXTRA[@]}" --resume_from_checkpoint=latest --experiment="$run"
  else
    "$@" "${TRAIN_EXTRA[@]}" --desc="$desc"
  fi
}

train_variants() {  # [extra training args...]
  # Paper 4.1: "Enhancers for SD15-based variants are trained with negative prompts." u is always one of
  # them (3.2: they "replace all null text embeddings"); the checkpoint records the list, and `sample`
  # below draws each image's u from it by default (README "Negative prompts"). A rerun continues them.
  local name model
  for name in dreamshaper absolutereality animepasteldream; do
    model=$(model_of "$name")
    train_once "variant-$name" "${LAUNCH[@]}" "$REPO/train_sd15.py" --pretrained_model_name_or_path="$model" \
      --train_data_dir="$COCO" --n_gpus="$NGPUS" --negative_prompts=default "$@"
  done
}

table1() {  # block: the six rows of one Table-1 block -> results/table1-<block>.{md,csv,json,png}
  local block=$1 out=samples/table1-$1 results=results/table1-$1.jsonl
  local family=sd15 model vae_model vae=() methods=(dice gd pnp) train sample base preset=toy
  case "$block" in
    toy) model=$REPO/dice/assets/shapes_world/shapes-world ;;
    toy-flow) family=sd3; model=$REPO/dice/assets/shapes_world/shapes-world-flow; methods=(dice gd)
      echo "the flow world (SD3 architecture): no PnP row (diffusers has no SD3 ControlNet made from the denoiser)" >&2 ;;
    sd15) model=$(model_of sd15) ;;
    dreamshaper) model=$(model_of dreamshaper) ;;
    sdxl) family=sdxl; model=$(model_of sdxl); vae_model=$(model_of sdxl-vae); vae=(--pretrained_vae_model_name_or_path="$vae_model") ;;
    pixart) family=pixart; model=$(model_of pixart); methods=(dice gd)
      echo "PixArt-alpha: no PnP row (diffusers has no PixArt ControlNet; README 'Table 1's other rows')" >&2 ;;
    *) echo "error: unknown Table-1 block '$block'. Use toy, toy-flow, sd15, dreamshaper, sdxl or pixart" >&2; exit 2 ;;
  esac
  local toy=; [ "${block%-flow}" = toy ] && toy=1  # a shapes world: one CPU process, no downloads
  if [ -z "$toy" ]; then  # the run behind the published block (dice/paper.py TABLE1_PRESETS, docs/authors_code.md)
    preset=$("$PYTHON" -m dice.recipes table1-preset "$block")
    echo "table1 $block: DICE, GD and PnP train with --preset $preset, the run that produced the published numbers" \
      "(docs/authors_code.md); the other: TRAIN_ARGS=\"--preset $([ "$preset" = authors ] && echo paper || echo authors)\"" \
      "(the paper's text; for DreamShaper add --negative_prompts=default, paper 4.1)" >&2
    ensure_ref  # before training: hours of training must not end at a missing reference
  fi
  local s w  # Scaling's s per model (the paper's; the flow world's chosen on validation prompts, dice/presets.py)
  s=$("$PYTHON" -m dice.recipes embedding-scale "${block/toy/shapes-world}")
  if [ -n "$toy" ]; then  # one CPU process, the world's data, held-out prompts and evaluator
    local data=data/shapes_world-train-4000 prompts=data/shapes_world-prompts-256.jsonl
    [ -f "$data/metadata.jsonl" ] || "$PYTHON" -m dice.shapes_world data --out "$data" --num_images 4000
    [ -f "$prompts" ] || "$PYTHON" -m dice.shapes_world prompts --out "$prompts" --num_prompts 256
    train=("$PYTHON" "$REPO/train_$family.py" --pretrained_model_name_or_path="$model" --train_data_dir="$data" --preset=toy
           --dataloader_num_workers=0 --validation_prompts "a red circle and a blue square" "a blue cross and a red triangle")
    sample=("$PYTHON" "$REPO/sample.py" --prompts="$prompts" --outdir="$out" --batch_gpu=64 ${TOY_PROMPTS:+--num_images="$TOY_PROMPTS"})
    base=(--model_name="${block/toy/shapes-world}")
  else
    train=("${LAUNCH[@]}" "$REPO/train_$family.py" --pretrained_model_name_or_path="$model" --train_data_dir="$COCO"
           --n_gpus="$NGPUS" --preset="$preset" "${vae[@]}")
    sample=("${LAUNCH[@]}" "$REPO/sample.py" --outdir="$out" --batch_gpu=16 "${LIMIT[@]}")
    base=(--pretrained_model_name_or_path="$model" "${vae[@]}")
  fi
  for method in "${methods[@]}"; do
    train_once "table1-$block-$method" "${train[@]}" --method="$method"
  done
  # CFG's w, and the ω GD and PnP are sampled at: the w DICE's teacher had (the paper's 5; the flow world's 3)
  w=$("$PYTHON" -m dice.recipes guidance-scale "$(run_of "table1-$block-dice")")
  # shellcheck disable=SC2206
  local sets=(${PROMPT_SETS:-coco5k}) set run gd_scale
  [ -n "$toy" ] && sets=("")  # the world's held-out prompts (in $sample)
  for set in "${sets[@]}"; do
    local on=(); [ -n "$set" ] && on=(--prompts="$set")
    "${sample[@]}" "${on[@]}" "${base[@]}" --cfg_scale="$w"
    "${sample[@]}" "${on[@]}" "${base[@]}"
    "${sample[@]}" "${on[@]}" "${base[@]}" --embedding_scale="$s"
    for method in "${methods[@]}"; do
      gd_scale=(); [ "$method" = dice ] || gd_scale=(--gd_scale="$w")  # GD and PnP replace CFG: sampled at ω = w
      "${sample[@]}" "${on[@]}" --model_path="$(run_of "table1-$block-$method")" "${gd_scale[@]}"
    done
  done
  local folders=("$out"/*-cfg-w"$w"-20steps-* "$out"/*-unguided-20steps-* "$out"/*-scaling-s"$s"-20steps-*)
  for method in "${methods[@]}"; do
    run=$(run_of "table1-$block-$method")
    folders+=("$out"/*-"$method"-"$(basename "$run" | cut -c1-5)"-*)
  done
  rm -f "$results"  # this run's folders only (a folder of an earlier experiment stays out of the table)
  if [ -n "$toy" ]; then
    for folder in "${folders[@]}"; do "$PYTHON" "$REPO/evaluation/shapes_world.py" calc --images="$folder" --results="$results"; done
  else
    RESULTS=$results evaluate "${folders[@]}"
  fi
  "$PYTHON" "$REPO/evaluation/results.py" --results "$results" --out "results/table1-$block"
}


sample_all() {  # experiment id: DICE + the two baselines of Table 1 on each of PROMPT_SETS (default: the 5k COCO prompts)
  local exp=$1 set w
  w=$("$PYTHON" -m dice.recipes guidance-scale "$exp")  # the w its teacher had (the paper's 5; SD3: the model card's)
  for set in ${PROMPT_SETS:-coco5k}; do
    # u (negative prompt) defaults to what the sharpener was trained with; the baselines below use "".
    "${LAUNCH[@]}" "$REPO/sample.py" --sharpener_path="$exp" --batch_gpu=16 --prompts="$set" "${LIMIT[@]}"
    # alpha 0 leaves the embedding unchanged: the sharpener's base model itself, labelled unguided / cfg.
    "${LAUNCH[@]}" "$REPO/sample.py" --sharpener_path="$exp" --alpha=0 --batch_gpu=16 --prompts="$set" "${LIMIT[@]}"
    "${LAUNCH[@]}" "$REPO/sample.py" --sharpener_path="$exp" --alpha=0 --cfg_scale="$w" --batch_gpu=16 --prompts="$set" "${LIMIT[@]}"
  done
}

ref() {  # the FID reference statistics, as the authors made them: val2017 centre-cropped and resized to 512
  if [ ! -d "$COCO/val2017" ]; then
    echo "error: $COCO/val2017 not found, so the FID reference $FID_REF cannot be built. Put MS-COCO 2017 under COCO=$COCO, or give FID_REF=<existing .npz>" >&2
    exit 2
  fi
  "${LAUNCH[@]}" "$REPO/evaluation/fid.py" ref --data="$COCO/val2017" --dest="$FID_REF" --center_crop_resize=512 "${SMOKE[@]}"
}

ensure_ref() {  # before any training: a missing reference is built (or refused) now, not after hours of training
  [ -f "$FID_REF" ] || ref
}

figures_toy() {  # the shapes world: train a sharpener (checkpoints every 150 updates) and run every analysis on it
  local data=data/shapes_world-train-4000 prompts=data/shapes_world-prompts-1000.jsonl out=results/figures/toy
  local model=$REPO/dice/assets/shapes_world/shapes-world single=data/shapes-world.safetensors fig=$REPO/figures
  local train=("$REPO/train_sd15.py" --pretrained_model_name_or_path="$model" --train_data_dir="$data" --preset=toy --output_dir=exps
               --dataloader_num_workers=0)
  [ -f "$data/metadata.jsonl" ] || "$PYTHON" -m dice.shapes_world data --out "$data" --num_images 4000
  [ -f "$prompts" ] || "$PYTHON" -m dice.shapes_world prompts --out "$prompts" --num_prompts 1000
  # A rerun continues an unfinished run (a finished one has nothing to do).
  train_once figures-toy "$PYTHON" "${train[@]}" --checkpointing_steps=150 \
    --validation_prompts "a red circle and a blue square" "a yellow triangle next to a green cross"
  local run
  run=$(run_of figures-toy)
  # Sweeps: TOY_PROMPTS held-out prompts (half unseen combinations), scored by the world's evaluator.
  local sweep=(--out="$out" --prompts="$prompts" --num_images="${TOY_PROMPTS:-128}" --metrics=world --batch_gpu=64)
  "$PYTHON" "$fig/quality_vs_nfe.py" "${sweep[@]}" --sharpener_path="$run" --nfe 4 8 12 20 40
  "$PYTHON" "$fig/alpha_sweep.py" "${sweep[@]}" --sharpener_path="$run" --alphas 0 0.5 1 1.5 2
  "$PYTHON" "$fig/dice_cfg_sweep.py" "${sweep[@]}" --sharpener_path="$run" --cfg_scales 1 2 5
  "$PYTHON" "$fig/training_curve.py" "${sweep[@]}" --experiment="$run"
  "$PYTHON" "$fig/sharpener_structure.py" "${sweep[@]}" --experiments "$run" --train 64x4 \
    --train_args="${train[*]:1} ${TRAIN_EXTRA[*]} --validation_prompts"
  [ -f "$single" ] || "$PYTHON" -m dice.testkit.single_file "$model" "$single"
  "$PYTHON" "$fig/transfer_matrix.py" "${sweep[@]}" --sharpeners "$run" "$(run_of structure-64x4)" \
    --models "$model" "$single" --single_file_config="$model"
  local inside=(--sharpener_path="$run" --out="$out")
  "$PYTHON" "$fig/semantic_padding.py" "${inside[@]}" --prompts="$prompts" --num_prompts=1000
  "$PYTHON" "$fig/embedding_pca.py" "${inside[@]}" --prompts="$prompts" --num_prompts=1000
  "$PYTHON" "$fig/attention_maps.py" "${inside[@]}" --prompt="a red circle and a blue square"
  "$PYTHON" "$fig/prompt_optimisation.py" --pretrained_model_name_or_path=shapes-world --out="$out" \
    --prompt="a red circle and a blue square" --fit_steps=300
  "$PYTHON" "$REPO/evaluation/results.py" --results "$out/results.jsonl" --out "$out/table"
}

figures() {  # experiment id: the paper's settings (5k COCO prompts, 20 steps, FID/CLIP/AS; 1,000 prompts for the embeddings)
  local exp=$1 out=results/figures/$1 fig=$REPO/figures
  ensure_ref
  local sweep=(--out="$out" --prompts="${PROMPTS:-coco5k}" --metrics=paper --ref="$FID_REF" --batch_gpu=16 "${LIMIT[@]}" "${SMOKE[@]}")
  "$PYTHON" "$fig/quality_vs_nfe.py" "${sweep[@]}" --sharpener_path="$exp"
  "$PYTHON" "$fig/alpha_sweep.py" "${sweep[@]}" --sharpener_path="$exp"
  "$PYTHON" "$fig/dice_cfg_sweep.py" "${sweep[@]}" --sharpener_path="$exp"
  "$PYTHON" "$fig/training_curve.py" "${sweep[@]}" --experiment="$exp"
  # A.1 and Fig. 6 compare several sharpeners: STRUCTURE_EXPS (runs trained with --sharpener_inner_dim/--sharpener_heads),
  # TRANSFER_SHARPENERS and TRANSFER_MODELS (e.g. the three variants' runs and models; single files need SINGLE_FILE_CONFIG).
  if [ -n "${STRUCTURE_EXPS:-}" ]; then
    # shellcheck disable=SC2086
    "$PYTHON" "$fig/sharpener_structure.py" "${sweep[@]}" --experiments "$exp" $STRUCTURE_EXPS
  fi
  if [ -n "${TRANSFER_MODELS:-}" ]; then
    # shellcheck disable=SC2086
    "$PYTHON" "$fig/transfer_matrix.py" "${sweep[@]}" --sharpeners "$exp" ${TRANSFER_SHARPENERS:-} \
      --models $TRANSFER_MODELS ${SINGLE_FILE_CONFIG:+--single_file_config="$SINGLE_FILE_CONFIG"}
  fi
  local inside=(--sharpener_path="$exp" --out="$out") embeddings=(--prompts=coco5k --num_prompts="${PROMPT_LIMIT:-1000}")
  "$PYTHON" "$fig/semantic_padding.py" "${inside[@]}" "${embeddings[@]}"
  "$PYTHON" "$fig/embedding_pca.py" "${inside[@]}" "${embeddings[@]}"
  "$PYTHON" "$fig/attention_maps.py" "${inside[@]}"
  "$PYTHON" "$fig/prompt_optimisation.py" --sharpener_path="$exp" --out="$out"
  "$PYTHON" "$REPO/evaluation/results.py" --results "$out/results.jsonl" --out "$out/table"
}

evaluate() {  # sample folders... -> $RESULTS (HPS v2.1 for the HPS / DrawBench sets, FID / CLIP / AS otherwise)
  # One process per metric scores all its folders: each metric network loads once, not once per folder.
  local into=(--results="${RESULTS:-results/results.jsonl}") hps=() coco=() folder
  for folder in "$@"; do
    if grep -qE '"prompts": "(hps-|drawbench)' "$folder/sampling_options.json" 2>/dev/null; then hps+=("$folder"); else coco+=("$folder"); fi
  done
  if [ ${#hps[@]} -gt 0 ]; then
    "${LAUNCH[@]}" "$REPO/evaluation/hps.py" calc --images "${hps[@]}" "${into[@]}" "${SMOKE[@]}"
  fi
  if [ ${#coco[@]} -gt 0 ]; then
    ensure_ref
    "${LAUNCH[@]}" "$REPO/evaluation/fid.py" calc --images "${coco[@]}" --ref="$FID_REF" "${into[@]}" "${SMOKE[@]}"
    "${LAUNCH[@]}" "$REPO/evaluation/clip_score.py" calc --images "${coco[@]}" "${into[@]}" "${SMOKE[@]}"
    "${LAUNCH[@]}" "$REPO/evaluation/aesthetic.py" calc --images "${coco[@]}" "${into[@]}" "${SMOKE[@]}"
  fi
}

case "${1:-}" in
  demo|demo-eval|train|train-variants|sample|eval|table|ref|figures|table1|rehearse)
    check_python
    mkdir -p "${WORKDIR:-$REPO}" && cd "${WORKDIR:-$REPO}" ;;
  *)
    sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 2 ;;  # the comment block above: the usage
esac

case "$1" in
  demo)
    # No GPU, no downloads: the shipped shapes-world model (or a tiny random pipeline) on CPU. Options: python -m dice.demo --help
    HF_HUB_OFFLINE=1 "$PYTHON" -m dice.demo "${@:2}" ;;
  demo-eval)
    # The latest exps/NNNNN-demo-* (or EXP_ID) end to end, no GPU needed; evaluators with random-weight stand-ins
    # (--smoke_test: meaningless numbers, plumbing only). Options: python -m dice.testkit.demo_eval --help
    HF_HUB_OFFLINE=1 "$PYTHON" -m dice.testkit.demo_eval "${@:2}" ;;
  train)
    train "${2:?family}" "${@:3}" ;;
  train-variants)
    train_variants "${@:2}" ;;
  sample)
    sample_all "${2:?experiment id}" ;;
  eval)
    evaluate "${@:2}" ;;
  table)
    "$PYTHON" "$REPO/evaluation/results.py" --results results/results.jsonl --out results/table ;;
  ref)
    ref ;;
  figures)
    if [ "${2:?experiment id or toy}" = toy ]; then OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 figures_toy; else figures "$2"; fi ;;
  table1)
    block=${2:?block: toy, toy-flow, sd15, dreamshaper, sdxl or pixart}
    case "$block" in
      toy|toy-flow) OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 table1 "$block" ;;
      *) table1 "$block" ;;
    esac ;;
  rehearse)
    "$PYTHON" -m dice.testkit.rehearsal "${@:2}" ;;
esac
