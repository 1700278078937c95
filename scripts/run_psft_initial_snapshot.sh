#!/usr/bin/env bash
# The paper's "never refreshed" snapshot ablation: PSFT against the initial model for the whole run.
#
#   MODEL=... NNODES=1 GPUS_PER_NODE=8 TRAIN_FILE=... bash scripts/run_psft_initial_snapshot.sh [overrides...] [--dry-run]
set -euo pipefail
PRESET="${PRESET:-paper_openr1_initial_snapshot}" LOSS_MODE=psft exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
