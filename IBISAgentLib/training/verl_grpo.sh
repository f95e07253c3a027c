#!/usr/bin/env bash
# GRPO for IBISAgent with verl (0.9.1), vLLM rollouts, no KL, on folders `ibisagent synth` wrote. Needs a GPU
# machine with verl and its vLLM stack.
#   bash verl_grpo.sh episodes    SYNTH_DIR VAL_DIR MODEL_DIR [more hydra overrides]
#       our agent loop (verl_agent_loop.py) plays G episodes of the product's loop per start
#       (episodes.parquet); every turn is a training row (verl's V1 trainer)
#   bash verl_grpo.sh single-turn SYNTH_DIR VAL_DIR MODEL_DIR [more hydra overrides]
#       the authors' recipe: one recorded state a sample (rl.parquet), scored by our reward
#       (paper: group 4, batch 256, lr 1e-6, 12 epochs)
set -euo pipefail
mode=$1 train=$2 val=$3 model=$4
shift 4
here=$(python -c "import IBISAgentLib.training as t, pathlib; print(pathlib.Path(t.__file__).parent)")
common=(
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=False
    data.max_prompt_length=2048
    data.max_response_length=512
    actor_rollout_ref.model.path="$model"
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.actor.use_kl_loss=False
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.n=4
    trainer.total_epochs=12
    trainer.project_name=ibisagent
)
case $mode in
episodes)
    python -m verl.trainer.main_ppo "${common[@]}" \
        trainer.use_v1=True \
        data.train_files="$train/episodes.parquet" \
        data.val_files="$val/episodes.parquet" \
        data.train_batch_size=64 \
        actor_rollout_ref.actor.ppo_mini_batch_size=16 \
        actor_rollout_ref.rollout.mode=async \
        actor_rollout_ref.rollout.calculate_log_probs=True \
        actor_rollout_ref.rollout.agent.agent_loop_config_path="$here/verl_agent_loop.yaml" \
        actor_rollout_ref.rollout.agent.default_agent_loop=ibis_agent \
        trainer.experiment_name=episode_grpo \
        "$@"
    ;;
single-turn)
    python -m verl.trainer.main_ppo "${common[@]}" \
        data.train_files="$train/rl.parquet" \
        data.val_files="$val/rl.parquet" \
        data.image_key=images \
        data.train_batch_size=256 \
        actor_rollout_ref.actor.ppo_mini_batch_size=64 \
        custom_reward_function.path="$here/verl_reward.py" \
        custom_reward_function.name=compute_score \
        trainer.experiment_name=grpo \
        "$@"
    ;;
*)
    echo "verl_grpo.sh: the first argument is episodes or single-turn, not '$mode'" >&2
    exit 2
    ;;
esac
