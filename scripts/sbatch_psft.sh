#!/usr/bin/env bash
# SLURM batch template: one training run that checkpoints before the time limit and requeues itself.
#
#   cd /path/to/this/repo && PRESET=paper_openr1 MODEL=... TRAIN_FILE=... sbatch scripts/sbatch_psft.sh [hydra overrides...]
#   sbatch scripts/sbatch_psft.sh -- COMMAND...      # any trainer command (it must be, or exec, the trainer)
#
# Without `--` it runs scripts/train.sh with the overrides (the same environment variables: PRESET,
# LOSS_MODE, MODEL, TRAIN_FILE, VAL_FILE, GPUS_PER_NODE, ...). Edit the #SBATCH lines for your cluster.
# Run sbatch from the repository root (SLURM runs a copy of this file, so the repository is found through
# SLURM_SUBMIT_DIR), or set PSFT_ROOT. Set trainer.default_local_dir to an absolute path on storage that
# survives the job: the requeued job resumes from it.
#
# Signals, and what each does:
# - `--signal=B:USR1@900`: 900 s before the time limit SLURM sends SIGUSR1 to this shell only. It
#   forwards SIGTERM to the trainer alone; the trainer finishes the step in progress, checkpoints it and
#   exits 143; this shell then requeues the job (`scontrol requeue`, needs --requeue), and the requeued job
#   resumes. Make 900 longer than one step plus one checkpoint save.
# - scancel, preemption, the time limit itself: SLURM sends SIGTERM to every process of the job (this
#   shell, the trainer, the local Ray processes). The trainer handles it as above (its Ray processes block
#   it: recipe/psft/ray_local.py); this shell forwards nothing, since a second SIGTERM would make the
#   trainer exit without saving, and does not requeue (SLURM requeues preempted jobs itself when so
#   configured). SIGKILL follows after the cluster's KillWait (30 s by default).
# - The trainer also handles SIGUSR1 itself (exit 138), for `--signal=USR1@N` on srun steps.
# A trainer stopped by a signal always exits with 128 + the signal; this shell exits with the trainer's code.
#
#SBATCH --job-name=psft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@900
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=psft-%x-%j.out
set -uo pipefail

ROOT="${PSFT_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}"
if [[ ! -f "$ROOT/recipe/psft/main_psft.py" ]]; then
    echo "[sbatch_psft] $ROOT is not the PSFT repository: run sbatch from its root or set PSFT_ROOT" >&2
    exit 2
fi
MAX_REQUEUES="${MAX_REQUEUES:-50}"

if [[ "${1:-}" == "--" ]]; then
    shift
    cmd=("$@")
else
    cmd=(bash "$ROOT/scripts/train.sh" "$@")
fi
if [[ ${#cmd[@]} -eq 0 ]]; then
    echo "[sbatch_psft] no command after --" >&2
    exit 2
fi

warned=""
cancelled=""
cd "$ROOT" || exit 2
# Started in the background so that this shell runs its traps while the trainer trains (bash runs a
# trap only between commands; `wait` returns early for one).
"${cmd[@]}" &
trainer=$!
trap 'warned=1; echo "[sbatch_psft] SIGUSR1 (time limit near): asking the trainer (pid $trainer) to checkpoint and stop" >&2; kill -TERM "$trainer" 2>/dev/null' USR1
trap 'cancelled=1; echo "[sbatch_psft] SIGTERM: the job is being stopped; the trainer got it too" >&2' TERM
echo "[sbatch_psft] trainer pid $trainer: ${cmd[*]}" >&2

status=0
while true; do
    wait "$trainer"
    status=$?
    # `wait` also returns (with 128 + n) when a trapped signal arrives: go on waiting while the trainer runs.
    if kill -0 "$trainer" 2>/dev/null; then continue; fi
    break
done
echo "[sbatch_psft] trainer exited with $status" >&2

if [[ $status == 143 && -n "$warned" && -z "$cancelled" ]]; then
    restarts="${SLURM_RESTART_COUNT:-0}"
    if [[ -z "${SLURM_JOB_ID:-}" ]]; then
        echo "[sbatch_psft] not a SLURM job: rerun the same command to resume" >&2
    elif ((restarts >= MAX_REQUEUES)); then
        echo "[sbatch_psft] requeued $restarts times already (MAX_REQUEUES=$MAX_REQUEUES): not requeueing" >&2
    elif scontrol requeue "$SLURM_JOB_ID"; then
        echo "[sbatch_psft] requeued job $SLURM_JOB_ID: it resumes from the checkpoint just saved" >&2
    else
        echo "[sbatch_psft] scontrol requeue $SLURM_JOB_ID failed: resubmit to resume" >&2
    fi
fi
exit "$status"
