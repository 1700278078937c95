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
# need RAY_AUTH_MODE=token here and the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN, read by
# the `ray` CLI from the environment, never put on the command line).
#
# ENV_VARS: space-separated NAME (value taken from this shell's environment) or NAME=VALUE entries
# for the job's processes, e.g. ENV_VARS="HF_HOME=/shared/hf WANDB_MODE=offline WANDB_PROJECT".
# The runtime environment is written as JSON (by a JSON encoder) to a private temporary file, so no
# value appears in any process's argv. Secrets are refused: names with TOKEN, KEY, SECRET, PASSWORD
# or CREDENTIAL, and values with credentials in a URL (scheme://user:password@host or
# scheme://token@host, e.g. HTTPS_PROXY=http://u:p@proxy): Ray shows runtime environments on its
# dashboard and job API. Put them in the environment of the cluster's `ray start` processes instead;
# jobs and workers inherit it.
#
# JOB_STOP_WAIT_S (default 900): how long `ray job stop` waits after its SIGTERM before it SIGKILLs the
# job (Ray's RAY_JOB_STOP_WAIT_TIME_S, 3 s unless set; set here in the job's runtime env, which Ray's
# job supervisor reads). The trainer needs one step plus one checkpoint save in that time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard address of the cluster, e.g. http://127.0.0.1:8265}"
# The `ray` CLI on PATH, else this repo's venv; PYTHON is the interpreter *on the cluster* for the job.
RAY="${RAY:-$(command -v ray || echo "$ROOT/.venv/bin/ray")}"
PYTHON="${PYTHON:-python3}"
LOCAL_PYTHON="$(command -v python3 || echo "$ROOT/.venv/bin/python")"

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
umask 077
env_file="$(mktemp "${TMPDIR:-/tmp}/psft_runtime_env.XXXXXX")"
trap 'rm -f "$env_file"' INT TERM
ROOT="$ROOT" ENV_VARS="${ENV_VARS:-}" JOB_STOP_WAIT_S="${JOB_STOP_WAIT_S:-900}" "$LOCAL_PYTHON" - "$env_file" <<'PY'
import json, os, re, sys

secret = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
# A URL's userinfo (scheme://user:password@ or scheme://token@): credentials in a value.
credential_url = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]+@")
allow_secrets = os.environ.get("PSFT_ALLOW_SECRETS_IN_RUNTIME_ENV") == "1"
refusal = (
    "Ray shows runtime environments on its dashboard and job API. Set it in the environment of the cluster's "
    "`ray start` processes (jobs and workers inherit it), or set PSFT_ALLOW_SECRETS_IN_RUNTIME_ENV=1 to pass it anyway."
)
wait = os.environ["JOB_STOP_WAIT_S"]
if not re.fullmatch(r"[0-9]+", wait) or int(wait) < 1:
    sys.exit(f"[submit_job] JOB_STOP_WAIT_S={wait!r}: expected a whole number of seconds >= 1")
# `ray job stop`: SIGTERM, then SIGKILL after this many seconds (Ray's job supervisor reads it from the
# job's runtime env; its default, 3 s, is shorter than any step plus checkpoint save).
env_vars = {"VERL_USE_EXTERNAL_PLUGINS": "auto", "RAY_JOB_STOP_WAIT_TIME_S": wait}
for entry in os.environ["ENV_VARS"].split():
    name, has_value, value = entry.partition("=")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        sys.exit(f"[submit_job] ENV_VARS entry {entry.split('=')[0]!r}: not a variable name")
    if secret.search(name) and not allow_secrets:
        sys.exit(f"[submit_job] ENV_VARS names {name}, which looks like a secret: {refusal}")
    if not has_value:
        if name not in os.environ:
            sys.exit(f"[submit_job] ENV_VARS names {name}, which is not set in this shell")
        value = os.environ[name]
    if credential_url.search(value) and not allow_secrets:  # never print the value itself
        sys.exit(
            f"[submit_job] ENV_VARS: the value of {name} holds credentials in a URL (scheme://user:password@ or "
            f"scheme://token@): {refusal}"
        )
    env_vars[name] = value
runtime_env = {
    "working_dir": os.environ["ROOT"],
    "excludes": [".venv", ".git", "outputs", "checkpoints"],
    "env_vars": env_vars,
}
with open(sys.argv[1], "w") as f:
    json.dump(runtime_env, f, indent=1)
PY

cmd=("$RAY" job submit --address "$RAY_ADDRESS" --runtime-env "$env_file" ${submit_flags[@]+"${submit_flags[@]}"} -- "${job[@]}")
if [[ $dry_run == 1 ]]; then
    # The runtime env file is kept for inspection; the command names it.
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
status=0
"${cmd[@]}" || status=$?
rm -f "$env_file"
exit "$status"
