#!/usr/bin/env bash
# The matched SFT control: SFT at PSFT's mini-batch and learning rate (256 / 32, k = 8 updates per step,
# lr 1e-6), so only the loss differs from scripts/run_psft.sh. scripts/run_sft.sh is the paper's baseline.
#
#   MODEL=... NNODES=1 GPUS_PER_NODE=8 TRAIN_FILE=... VAL_FILE=... bash scripts/run_sft_matched.sh [overrides...] [--dry-run]
set -euo pipefail
PRESET="${PRESET:-paper_openr1_sft_matched}" LOSS_MODE=sft exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
