#!/usr/bin/env bash
# PSFT in the paper's setting (batch 256, mini-batch 32, lr 1e-6, eps 0.2/0.28, 10 warm-up steps,
# weight decay 0.1, grad clip 1.0) on Qwen2.5-7B-Instruct or Llama-3.1-8B-Instruct.
#
#   MODEL=~/models/Llama-3.1-8B-Instruct NNODES=2 GPUS_PER_NODE=8 TRAIN_FILE=... VAL_FILE=... \
#       bash scripts/run_psft.sh [hydra overrides...] [--dry-run]
set -euo pipefail
LOSS_MODE=psft exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
