#!/usr/bin/env bash
# GRPO for IBISAgent with verl on data from `ibisagent synth` and our reward (the paper's settings:
# group size 4, batch 256, lr 1e-6, no KL, vLLM rollouts, 12 epochs). Needs a GPU machine with verl.
#   bash verl_grpo.sh SYNTH_DIR VAL_DIR MODEL_DIR [more hydra overrides]
set -euo pipefail
train=$1 val=$2 model=$3
shift 3
reward=$(python -c "import IBISAgentLib.training.verl_reward as r; print(r.__file__)")
python -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    data.train_files="$train/rl.parquet" \
    data.val_files="$val/rl.parquet" \
    data.image_key=images \
    data.train_batch_size=256 \
    data.max_prompt_length=2048 \
    data.max_response_length=512 \
    actor_rollout_ref.model.path="$model" \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=4 \
    custom_reward_function.path="$reward" \
    custom_reward_function.name=compute_score \
    trainer.total_epochs=12 \
    trainer.project_name=ibisagent \
    trainer.experiment_name=grpo \
    "$@"
