#!/usr/bin/env bash
# The prepared GPU check: one script, one call, well inside 10 minutes on one H100/H200.
#
#   bash scripts/gpu_kit.sh .gpukit          # here, where the package index is reachable (< 60 MiB)
#   bash benchmarks/gpu_check.sh             # on the GPU host, from the repo root, .gpukit carried along
#
# 1. installs the kit (offline, into /tmp/psft-site, torch untouched) and checks the imports;
# 2. builds a random Qwen2 of Qwen2.5-0.5B's shape and toy demonstrations (python -m benchmarks.gpu_bench);
# 3. trains SFT and PSFT k=1 through `python -m recipe.psft.main_psft` (FSDP2, bf16, sdpa, 1 GPU) and
#    checks that they match step for step;
# 4. times SFT, PSFT k=1, PSFT k=4, SFT with 4 updates and token metrics on/off in one trainer, and
#    prints the table (step time, ratios, peak GPU memory, tokens/s).
# Logs of every stage go to $OUT (default ./gpu_check_out). Environment knobs: KIT (kit folder,
# default .gpukit), SIZE (0.5b|tiny), ROWS, DEMO_TOKENS, BATCH, K, ROUNDS, SAME_RUN_STEPS, RUN_TIMEOUT,
# EXTRA_OVERRIDES (Hydra overrides added to every run), SKIP_INSTALL=1 (use the current environment),
# ALLOW_CPU=1 (rehearse on a machine without a GPU).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/gpu_check_out}"
KIT="${KIT:-$REPO/.gpukit}"
PYTHON="${PYTHON:-python3}"
SITE="${SITE:-/tmp/psft-site}"
WORK="${WORK:-/tmp/psft-gpu-check}"
SIZE="${SIZE:-0.5b}"
ROWS="${ROWS:-64}"
DEMO_TOKENS="${DEMO_TOKENS:-1000}"
BATCH="${BATCH:-32}"
K="${K:-4}"
ROUNDS="${ROUNDS:-4}"
SAME_RUN_STEPS="${SAME_RUN_STEPS:-3}"
RUN_TIMEOUT="${RUN_TIMEOUT:-240}"
read -r -a EXTRA <<<"${EXTRA_OVERRIDES:-}"
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0
T0=$SECONDS
stage() { echo; echo "=== [gpu_check +$((SECONDS - T0))s] $*"; }
die() { echo "[gpu_check] FAILED: $*" >&2; exit 1; }

stage "preflight"
command -v "$PYTHON" >/dev/null || die "no $PYTHON on PATH"
if [[ "${ALLOW_CPU:-0}" != 1 ]]; then
    nvidia-smi -L || die "nvidia-smi found no GPU"
    "$PYTHON" -c 'import torch; assert torch.cuda.is_available(); print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))' ||
        die "torch in $PYTHON does not see a CUDA device"
fi

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    stage "install the kit from $KIT into $SITE"
    [[ -f "$KIT/install.sh" && -f "$KIT/wheels.tar.xz" ]] ||
        die "no kit at $KIT: build it with 'bash scripts/gpu_kit.sh .gpukit' and carry .gpukit"
    "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' ||
        die "the kit's wheels are for CPython 3.12; $PYTHON is $("$PYTHON" -V 2>&1)"
    PYTHON="$PYTHON" bash "$KIT/install.sh" --target "$SITE" --no-project || die "installing the kit failed"
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
# Ray's and verl's console scripts, if anything asks for them.
export PATH="$SITE/bin:$PATH"

stage "imports and versions"
"$PYTHON" - <<'PY' || die "the recipe's stack does not import (see the traceback above)"
import importlib.metadata as md
import importlib.util

import ray, torch, transformers, verl  # noqa: E401,F401
import recipe.psft.psft_trainer  # noqa: F401

for name in ("torch", "transformers", "tokenizers", "verl", "ray", "tensordict", "hydra-core", "peft",
             "accelerate", "numpy", "pandas", "pyarrow", "protobuf", "safetensors", "huggingface-hub"):
    try:
        print(f"  {name:<16} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name:<16} MISSING")
assert transformers.__version__.startswith("5.10."), f"transformers {transformers.__version__} shadows the kit's"
print("  flash_attn      ", "present" if importlib.util.find_spec("flash_attn") else "absent (sdpa attention)")
PY

# sdpa: flash-attention is not on the GPU image (verl's default is flash_attention_2). FSDP2, bf16
# compute (verl's default engine.dtype) over fp32 master weights.
COMMON=(
    "++model.override_config.attn_implementation=sdpa"
    "engine.strategy=fsdp2"
    "data.max_length=$((DEMO_TOKENS + 256))"
    "${EXTRA[@]}"
)

stage "build the model and data ($SIZE, $ROWS rows of ~$DEMO_TOKENS tokens)"
"$PYTHON" -m benchmarks.gpu_bench prepare "$WORK" --size "$SIZE" --rows "$ROWS" --demo-tokens "$DEMO_TOKENS" ||
    die "building the model or data failed"

train() {  # NAME OVERRIDES...: one main_psft run, its output in $OUT/NAME.log, metrics in $OUT/NAME.jsonl
    local name="$1"
    shift
    rm -f "$OUT/$name.jsonl"
    VERL_FILE_LOGGER_PATH="$OUT/$name.jsonl" timeout "$RUN_TIMEOUT" "$PYTHON" -m recipe.psft.main_psft \
        "model.path=$WORK/model" "data.train_files=$WORK/train.parquet" "data.val_files=null" \
        "data.train_batch_size=$BATCH" "trainer.total_training_steps=$SAME_RUN_STEPS" "trainer.n_gpus_per_node=1" \
        "trainer.logger=[console,file]" "checkpoint.save_contents=[model]" "trainer.default_local_dir=$WORK/ckpt_$name" \
        "trainer.experiment_name=$name" "optim.lr=1e-5" "optim.lr_warmup_steps=0" \
        "${COMMON[@]}" "$@" >"$OUT/$name.log" 2>&1 || {
        tail -40 "$OUT/$name.log"
        die "main_psft run '$name' failed (full log: $OUT/$name.log)"
    }
    echo "  $name: $(grep -c . "$OUT/$name.jsonl") metric lines, $(grep -o '"perf/step_time_s": [0-9.]*' "$OUT/$name.jsonl" | tail -1)"
}

stage "main_psft: SFT and PSFT k=1 ($SAME_RUN_STEPS steps each)"
train sft "psft.loss_mode=sft" "psft.mini_batch_size=$BATCH"
train psft_k1 "psft.loss_mode=psft" "psft.mini_batch_size=$BATCH"
"$PYTHON" -m benchmarks.gpu_bench same-run "$OUT/sft.jsonl" "$OUT/psft_k1.jsonl" ||
    die "PSFT with k=1 is not SFT on this GPU"

stage "step cost: one trainer, variants interleaved"
timeout "$((2 * RUN_TIMEOUT))" "$PYTHON" -m benchmarks.gpu_bench steps --model "$WORK/model" --train "$WORK/train.parquet" --batch "$BATCH" \
    --k "$K" --rounds "$ROUNDS" --out "$OUT/steps.json" "${COMMON[@]}" >"$OUT/steps.log" 2>&1 || {
    tail -40 "$OUT/steps.log"
    die "the step-cost benchmark failed (full log: $OUT/steps.log)"
}

stage "summary"
if [[ "${ALLOW_CPU:-0}" != 1 ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PYTHON" -m benchmarks.gpu_bench same-run "$OUT/sft.jsonl" "$OUT/psft_k1.jsonl" | tail -1
sed -n '/^median over/,$p' "$OUT/steps.log"
echo "[gpu_check] OK in $((SECONDS - T0)) s; logs in $OUT"
