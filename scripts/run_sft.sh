#!/usr/bin/env bash
# The paper's SFT baseline, as the original's author ran it (zwhong714/PSFT issues 7 and 18): batch 256,
# mini-batch = batch (one update per step), lr 2e-5; the rest as PSFT. The matched control (PSFT's k = 8
# updates at lr 1e-6) is scripts/run_sft_matched.sh. PRESET=limo_toy_sft: the LIMO toy run's SFT.
#
#   MODEL=... NNODES=1 GPUS_PER_NODE=8 TRAIN_FILE=... VAL_FILE=... bash scripts/run_sft.sh [overrides...] [--dry-run]
set -euo pipefail
PRESET="${PRESET:-paper_openr1_sft}" LOSS_MODE=sft exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
