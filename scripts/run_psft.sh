#!/usr/bin/env bash
# PSFT in the paper's setting (recipe/psft/config/psft_trainer.yaml + the paper_openr1 preset)
# on Qwen2.5-7B-Instruct or Llama-3.1-8B-Instruct.
#
#   MODEL=~/models/Llama-3.1-8B-Instruct NNODES=2 GPUS_PER_NODE=8 TRAIN_FILE=... VAL_FILE=... \
#       bash scripts/run_psft.sh [hydra overrides...] [--dry-run]
set -euo pipefail
LOSS_MODE=psft exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
