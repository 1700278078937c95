#!/usr/bin/env bash
# The paper's SFT-KL baseline (SFT + 0.5 x KL to the initial model) in the paper's setting.
#
#   MODEL=... NNODES=1 GPUS_PER_NODE=8 TRAIN_FILE=... VAL_FILE=... bash scripts/run_sft_kl.sh [overrides...] [--dry-run]
set -euo pipefail
PRESET="${PRESET:-paper_openr1_sft_kl}" LOSS_MODE=sft_kl exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
