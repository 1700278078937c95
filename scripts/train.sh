#!/usr/bin/env bash
# Launch PSFT (or a baseline) with a preset from configs/experiment/, on this node or a Ray cluster.
#
#   [LOSS_MODE=psft|sft|dft|sft_kl|asft]  PRESET=paper_openr1  MODEL=/path/to/hf_model  TRAIN_FILE=...  VAL_FILE=...
#   NNODES=1  GPUS_PER_NODE=8  bash scripts/train.sh [hydra overrides...] [--dry-run]
#
# Without LOSS_MODE the preset's psft.loss_mode stands (e.g. PRESET=paper_openr1_sft_matched is SFT).
#
# Multi-node: start Ray on every node first (`ray start --head` / `ray start --address=HEAD:6379`) and
# run this on the head node with RAY_ADDRESS=auto, or submit it with scripts/submit_job.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"
parse_dry_run "$@"

LOSS_MODE="${LOSS_MODE:-}"
PRESET="${PRESET:-paper_openr1}"
MODEL="${MODEL:-$HOME/models/Qwen2.5-7B-Instruct}"
TRAIN_FILE="${TRAIN_FILE:-$HOME/data/openr1/train.parquet}"
VAL_FILE="${VAL_FILE:-}"
NNODES="${NNODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
PYTHON="${PYTHON:-python3}"
model_name="$(basename "$MODEL")"
# The default name tells sweep points apart: an optim.lr=... override (the last one wins) joins it, so
# `run_psft.sh optim.lr=1e-6` and `optim.lr=2e-6` write different checkpoint folders. (Two runs on one
# folder are refused anyway: recipe/psft/folder_lock.py.) Without the override the preset's lr applies.
lr_tag=""
for arg in ${ARGS[@]+"${ARGS[@]}"}; do
    if [[ "$arg" == optim.lr=* || "$arg" == ++optim.lr=* || "$arg" == +optim.lr=* ]]; then lr_tag="-lr${arg#*=}"; fi
done
EXPERIMENT="${EXPERIMENT:-${LOSS_MODE:+${LOSS_MODE}-}${model_name}-${PRESET}${lr_tag}}"

if [[ -n "$VAL_FILE" ]]; then val="data.val_files=$VAL_FILE"; else val="data.val_files=null"; fi
mode=()
if [[ -n "$LOSS_MODE" ]]; then mode=("psft.loss_mode=$LOSS_MODE"); fi

cmd=(
    "$PYTHON" -m recipe.psft.main_psft
    --config-dir="$ROOT/configs" "+experiment=$PRESET"
    ${mode[@]+"${mode[@]}"}
    "model.path=$MODEL"
    "data.train_files=$TRAIN_FILE"
    "$val"
    "trainer.nnodes=$NNODES"
    "trainer.n_gpus_per_node=$GPUS_PER_NODE"
    "trainer.experiment_name=$EXPERIMENT"
    ${ARGS[@]+"${ARGS[@]}"}
)

cd "$ROOT"
print_or_exec "${cmd[@]}"
