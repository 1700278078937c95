#!/usr/bin/env bash
# The test command: build/refresh the environment, lint, then run the whole suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
VENV="${PSFT_VENV:-$ROOT/.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest "$@"
