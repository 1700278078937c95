#!/usr/bin/env bash
# Evaluate a checkpoint on the paper's whole benchmark suite (arXiv v2): vLLM behind Ray Serve, then the
# client with `--preset paper` (evaluation/presets.py: temperature 0.7, top-p 0.95, 10,240 new tokens,
# IFEval 4,096; Avg@32 on AIME-24/25 and AMC-23, Avg@8 on every other benchmark; every other sampling
# parameter neutral and pinned in each request). In-domain: AIME-24/25, AMC-23, MATH-500, Minerva,
# OlympiadBench; out-of-domain: GPQA-Diamond, ARC-Challenge, TruthfulQA, IFEval, MMLU-Pro, SuperGPQA, HeadQA.
# Ends with the paper-style table (python -m evaluation.paper_table): in-domain and 7-benchmark
# out-of-domain averages.
#
#   bash scripts/eval.sh MODEL_DIR [--dry-run]
#   DATA_DIR=~/data/benchmarks (test_<name>.parquet from `prepare_data.py --source benchmarks`)
#   OUT_DIR=outputs/eval/<experiment>/global_step_N (from MODEL_DIR; its basename for other folders)
#   TP=1 (tensor parallel)  PORT=8000  RETRIES=2 (reruns of an incomplete benchmark)
#   PRESET=paper (or r1, greedy)  EVAL_ARGS="" (more evaluation.eval flags for every benchmark, e.g. "--n 1")
#   BENCHMARKS="aime24 aime25 amc23 math500 minerva olympiadbench gpqa_diamond arc_challenge truthfulqa
#               ifeval mmlu_pro supergpqa headqa"
# Results: OUT_DIR/<benchmark>/summary.json; rerunning continues unfinished benchmarks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

dry_run=0
model=""
for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then dry_run=1; else model="$arg"; fi
done
[[ -n "$model" ]] || { echo "usage: bash scripts/eval.sh MODEL_DIR [--dry-run]" >&2; exit 2; }

PYTHON="${PYTHON:-python3}"
SERVE="${SERVE:-$(command -v serve || echo "$ROOT/.venv/bin/serve")}"
DATA_DIR="${DATA_DIR:-$HOME/data/benchmarks}"
# A verl checkpoint is .../<experiment>/global_step_N/huggingface: its basename names nothing, so the
# results folder and the served name come from the path (the same rule as evaluation.identity).
name="$(cd "$ROOT" && PYTHONPATH="$ROOT" "$PYTHON" -c 'import sys; from evaluation.identity import model_label; print(model_label(sys.argv[1]))' "$model")"
OUT_DIR="${OUT_DIR:-$ROOT/outputs/eval/$name}"
TP="${TP:-1}"
PORT="${PORT:-8000}"
RETRIES="${RETRIES:-2}"
BENCHMARKS="${BENCHMARKS:-aime24 aime25 amc23 math500 minerva olympiadbench gpqa_diamond arc_challenge truthfulqa ifeval mmlu_pro supergpqa headqa}"
PRESET="${PRESET:-paper}"
read -r -a extra_args <<<"${EVAL_ARGS:-}"

serve_cmd=("$SERVE" run evaluation.serve_app:build_app "model=$model" "tensor-parallel-size=$TP" "port=$PORT"
    "served-model-name=$name")
eval_cmd() {  # sets `cmd` to the client command for benchmark $1
    cmd=("$PYTHON" -m evaluation.eval --model "$name" --model-path "$model" --test_file "$DATA_DIR/test_$1.parquet"
        --preset "$PRESET" --base-url "http://127.0.0.1:$PORT" --concurrency 64 --output "$OUT_DIR/$1"
        ${extra_args[@]+"${extra_args[@]}"})
}
report_cmd=("$PYTHON" -m evaluation.paper_table "$OUT_DIR")

if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "${serve_cmd[@]}"
    printf '&\n'
    for bench in $BENCHMARKS; do
        eval_cmd "$bench"
        printf '%q ' "${cmd[@]}"
        printf '\n'
    done
    printf '%q ' "${report_cmd[@]}"
    printf '\n'
    exit 0
fi

for bench in $BENCHMARKS; do
    [[ -f "$DATA_DIR/test_$bench.parquet" ]] || {
        echo "$DATA_DIR/test_$bench.parquet not found: python prepare_data.py --source benchmarks --output-dir $DATA_DIR" >&2
        exit 2
    }
done
cd "$ROOT"
mkdir -p "$OUT_DIR"
"${serve_cmd[@]}" >"$OUT_DIR/serve.log" 2>&1 &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true' EXIT
echo "waiting for the server on 127.0.0.1:$PORT (log: $OUT_DIR/serve.log)"
ready=0
for _ in $(seq 1 360); do
    # /health needs no API key (the key never goes on a command line).
    if curl -sf --max-time 10 "http://127.0.0.1:$PORT/health" >/dev/null; then ready=1; break; fi
    kill -0 "$serve_pid" 2>/dev/null || { echo "the server exited; see $OUT_DIR/serve.log" >&2; exit 1; }
    sleep 5
done
[[ "$ready" == 1 ]] || { echo "the server did not answer in 30 minutes; see $OUT_DIR/serve.log" >&2; exit 1; }
# Whatever answers on the port (an older server left running?) must prove it serves this model's weights.
"$PYTHON" -m evaluation.identity --base-url "http://127.0.0.1:$PORT" --model "$name" --model-path "$model" >/dev/null || {
    echo "refusing to evaluate: the server on port $PORT does not serve $model (above); stop it or set PORT" >&2
    exit 2
}
status=0
for bench in $BENCHMARKS; do
    eval_cmd "$bench"
    # Exit 6 = some samples failed (recorded as errors): the same command retries exactly those.
    for attempt in $(seq 0 "$RETRIES"); do
        echo "+ ${cmd[*]}"
        code=0
        "${cmd[@]}" || code=$?
        [[ "$code" == 6 && "$attempt" -lt "$RETRIES" ]] || break
        echo "$bench incomplete (exit 6): rerunning to retry the failed samples"
    done
    [[ "$code" == 0 ]] || status=$code
    [[ "$code" == 130 ]] && exit 130
done
"${report_cmd[@]}" | tee "$OUT_DIR/table.txt"
exit "$status"
