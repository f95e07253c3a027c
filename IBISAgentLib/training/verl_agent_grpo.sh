#!/usr/bin/env bash
# Episode GRPO with verl's agent loop: G episodes of the product's loop per start, every turn a training row
# (verl's V1 trainer), vLLM rollouts, no KL. Needs a GPU machine with verl 0.9.1 and its vLLM stack.
#   bash verl_agent_grpo.sh SYNTH_DIR VAL_DIR MODEL_DIR [more hydra overrides]
# SYNTH_DIR and VAL_DIR are folders `ibisagent synth` wrote (their episodes.parquet: one row a start).
set -euo pipefail
train=$1 val=$2 model=$3
shift 3
loops=$(python -c "import IBISAgentLib.training as t, pathlib; print(pathlib.Path(t.__file__).with_name('verl_agent_loop.yaml'))")
python -m verl.trainer.main_ppo \
    trainer.use_v1=True \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    data.train_files="$train/episodes.parquet" \
    data.val_files="$val/episodes.parquet" \
    data.train_batch_size=64 \
    data.max_prompt_length=2048 \
    data.max_response_length=512 \
    actor_rollout_ref.model.path="$model" \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.ppo_mini_batch_size=16 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.mode=async \
    actor_rollout_ref.rollout.n=4 \
    actor_rollout_ref.rollout.calculate_log_probs=True \
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$loops" \
    actor_rollout_ref.rollout.agent.default_agent_loop=ibis_agent \
    trainer.total_epochs=12 \
    trainer.project_name=ibisagent \
    trainer.experiment_name=episode_grpo \
    "$@"
