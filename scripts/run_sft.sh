#!/usr/bin/env bash
# The SFT baseline with the same data, batch, mini-batches (k updates per step) and optimiser as PSFT.
#
#   MODEL=... NNODES=1 GPUS_PER_NODE=8 TRAIN_FILE=... VAL_FILE=... bash scripts/run_sft.sh [overrides...] [--dry-run]
set -euo pipefail
PRESET="${PRESET:-paper_openr1_sft}" LOSS_MODE=sft exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
