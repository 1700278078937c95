#!/usr/bin/env bash
# The paper's PSFT-warm-up: SFT for the first psft.sft_warmup_steps steps (preset: 178), then PSFT.
#
#   MODEL=... NNODES=1 GPUS_PER_NODE=8 TRAIN_FILE=... bash scripts/run_psft_warmup.sh [psft.sft_warmup_steps=N ...] [--dry-run]
set -euo pipefail
PRESET="${PRESET:-paper_openr1_psft_warmup}" LOSS_MODE=psft exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
