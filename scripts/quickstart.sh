#!/usr/bin/env bash
# The main job: the whole PSFT pipeline offline on a laptop-class CPU (2 cores, about 20 minutes once
# packages are cached). Builds the environment, materialises SmolLM2-135M-Instruct, prepares the
# built-in data, trains SFT and PSFT, evaluates base/SFT/PSFT with vLLM and writes
# outputs/quickstart/report.md (or $PSFT_QUICKSTART_OUT) with a table and figures.
#
#   bash scripts/quickstart.sh            # full run; rerun to continue after an interruption
#   bash scripts/quickstart.sh --smoke    # tiny random model, a few steps
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "${PSFT_VENV:-$ROOT/.venv}/bin/python" -m pipelines.quickstart "$@"
