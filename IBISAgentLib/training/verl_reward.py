"""verl loads a custom reward as a standalone file (``custom_reward_function.path``), where relative
imports do not work; this file re-exports our reward through the installed package."""

from IBISAgentLib.training.rewards import compute_score

__all__ = ["compute_score"]
