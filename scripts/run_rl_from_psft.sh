#!/usr/bin/env bash
# GRPO from a PSFT checkpoint with verl's own PPO trainer: the paper's "PSFT as a start point for RL".
#
#   PSFT_CKPT=checkpoints/psft/<experiment>/global_step_N/huggingface  TRAIN_FILE=rl_train.parquet \
#   VAL_FILE=test.parquet NNODES=1 GPUS_PER_NODE=8 bash scripts/run_rl_from_psft.sh [overrides...] [--dry-run]
#
# TRAIN_FILE/VAL_FILE: prepare_data.py output (prompt + reward_model.ground_truth); the reward is
# evaluation/verl_reward.py (evaluation.grader), rollouts use vLLM (install the `gpu` extra).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"
parse_dry_run "$@"

PSFT_CKPT="${PSFT_CKPT:?set PSFT_CKPT to a PSFT checkpoint folder with HF weights (…/global_step_N/huggingface)}"
TRAIN_FILE="${TRAIN_FILE:-$HOME/data/openr1/train.parquet}"
VAL_FILE="${VAL_FILE:-$HOME/data/benchmarks/test_aime24.parquet}"
NNODES="${NNODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
ROLLOUT_N="${ROLLOUT_N:-8}"
PYTHON="${PYTHON:-python3}"
EXPERIMENT="${EXPERIMENT:-grpo-from-$(basename "$(dirname "$PSFT_CKPT")")}"

cmd=(
    "$PYTHON" -m verl.trainer.main_ppo
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=false
    "data.train_files=$TRAIN_FILE"
    "data.val_files=$VAL_FILE"
    data.train_batch_size=128
    data.max_prompt_length=2048
    data.max_response_length=8192
    data.filter_overlong_prompts=true
    data.truncation=error
    "actor_rollout_ref.model.path=$PSFT_CKPT"
    actor_rollout_ref.model.use_remove_padding=true
    actor_rollout_ref.model.enable_gradient_checkpointing=true
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.actor.ppo_mini_batch_size=32
    actor_rollout_ref.actor.use_dynamic_bsz=true
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=24576
    actor_rollout_ref.actor.use_kl_loss=false
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.actor.clip_ratio_high=0.28
    actor_rollout_ref.actor.loss_agg_mode=token-mean
    actor_rollout_ref.rollout.name=vllm
    "actor_rollout_ref.rollout.n=$ROLLOUT_N"
    actor_rollout_ref.rollout.temperature=1.0
    actor_rollout_ref.rollout.tensor_model_parallel_size=1
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6
    reward.custom_reward_function.path=pkg://evaluation.verl_reward
    reward.custom_reward_function.name=compute_score
    trainer.project_name=psft-rl
    "trainer.experiment_name=$EXPERIMENT"
    "trainer.nnodes=$NNODES"
    "trainer.n_gpus_per_node=$GPUS_PER_NODE"
    trainer.total_epochs=1
    trainer.save_freq=50
    trainer.test_freq=25
    "trainer.logger=[console,file,wandb]"
    ${ARGS[@]+"${ARGS[@]}"}
)

cd "$ROOT"
print_or_exec "${cmd[@]}"
