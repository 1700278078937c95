#!/usr/bin/env bash
# Submit a training run to a Ray cluster as a Ray job (`ray job submit`), with this repo as the
# job's working directory.
#
#   RAY_ADDRESS=http://HEAD:8265 bash scripts/submit_job.sh [--dry-run] [--no-wait] -- COMMAND...
#   RAY_ADDRESS=http://HEAD:8265 bash scripts/submit_job.sh [hydra overrides...]     # main_psft
#
# Without `--`, the job runs `python3 -m recipe.psft.main_psft` with the given overrides.
# Paths in overrides (model, data, trainer.default_local_dir) are paths on the cluster: use shared
# storage or absolute paths on the head node. PYTHON (default python3) is the job's interpreter on
# the cluster. Clusters with Ray token authentication (the default for `ray start` since Ray 2.5x)
# need RAY_AUTH_MODE=token here and the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN). ENV_VARS (space-separated NAME=VALUE pairs) are
# passed to the job's processes, e.g. ENV_VARS="WANDB_API_KEY=... HF_HOME=/shared/hf".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard address of the cluster, e.g. http://127.0.0.1:8265}"
# The `ray` CLI on PATH, else this repo's venv; PYTHON is the interpreter *on the cluster* for the job.
RAY="${RAY:-$(command -v ray || echo "$ROOT/.venv/bin/ray")}"
PYTHON="${PYTHON:-python3}"

dry_run=0
submit_flags=()
job=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --no-wait) submit_flags+=(--no-wait) ;;
        --) shift; job=("$@"); break ;;
        *) job+=("$1") ;;
    esac
    shift
done
if [[ ${#job[@]} -eq 0 || "${job[0]}" == *=* ]]; then
    job=("$PYTHON" -m recipe.psft.main_psft ${job[@]+"${job[@]}"})
fi

# Runtime env: ship the repo (not its venv, outputs or checkpoints) and the chosen env vars.
env_json="{\"VERL_USE_EXTERNAL_PLUGINS\": \"auto\""
for pair in ${ENV_VARS:-}; do
    env_json+=", \"${pair%%=*}\": \"${pair#*=}\""
done
env_json+="}"
runtime_env="{\"working_dir\": \"$ROOT\", \"excludes\": [\".venv\", \".git\", \"outputs\", \"checkpoints\"], \"env_vars\": $env_json}"

cmd=("$RAY" job submit --address "$RAY_ADDRESS" --runtime-env-json "$runtime_env" ${submit_flags[@]+"${submit_flags[@]}"} -- "${job[@]}")
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"
DRY_RUN=$dry_run
print_or_exec "${cmd[@]}"
