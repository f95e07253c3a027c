"""Training and evaluation on the product's own loop: the oracle clicker, trajectory synthesis,
GRPO rewards, a multi-turn rollout environment and the evaluation harness."""
