#!/usr/bin/env bash
# The toy-world study: does PSFT's trust region keep entropy and out-of-domain skill where SFT loses
# them? Pretrains a small model on a synthetic world (cached), fine-tunes it on one narrow task with
# sft / psft (k = 4, 8) / dft (and sft_kl when the recipe has it), 3 seeds x 3 learning rates, and
# writes outputs/study/report.md with a table and figures. Offline, 2 CPU cores, about 30 minutes.
#
#   bash scripts/study.sh                  # the default study; rerun to continue after an interruption
#   bash scripts/study.sh --quick          # smoke-sized (a few minutes)
#   bash scripts/study.sh --out DIR --methods sft,psft_k8 --lrs 1e-3 --seeds 0
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "${PSFT_VENV:-$ROOT/.venv}/bin/python" -m pipelines.study "$@"
