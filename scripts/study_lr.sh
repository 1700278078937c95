#!/usr/bin/env bash
# The second toy-world study: is the paper's SFT-vs-PSFT gap the trust region or the learning rate?
# Pretrains 3 small models (cached), fine-tunes each with the paper's pairing (SFT one update per step
# at a high lr; PSFT k=8 at a 20x lower lr), the matched pairs at both lrs, and PSFT without clip, with a
# never refreshed snapshot and with k=16; 3 fine-tuning seeds each. Writes
# outputs/study-lr/lr_vs_trust_region.md with figures. Offline, 2 CPU cores: 10 minutes from a clean clone
# on an idle machine (pretraining included; README "Second study").
#
#   bash scripts/study_lr.sh                  # the default study; rerun to continue after an interruption
#   bash scripts/study_lr.sh --quick          # smoke-sized (a couple of minutes)
#   bash scripts/study_lr.sh --out DIR --conditions sft_1x_hi,psft_k8_lo,sft_k8_lo --seeds 0
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "${PSFT_VENV:-$ROOT/.venv}/bin/python" -m pipelines.study.lr_study "$@"
