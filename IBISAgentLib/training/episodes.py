"""Advantages of whole episodes, for GRPO over the product's own loop (TRL here, verl at scale).

A group is G episodes from the same start. Every turn of every episode is one training sample, and its
advantage is

    A(e, t) = episode_weight * norm_G(R_e) + shaped_weight * norm_group(s_(e, t))

- R_e, the episode's return: the answer tier of the IoU the episode ended with (0..3) plus the mean
  format score of its turns (0..1), so the outcome, not the path, decides most of it;
- s_(e, t), the turn's shaped reward: placement (region, -1 or +1) + progress (0 or 1) + length (1, then
  -0.2 a step beyond the fifth), the dense signal of each move;
- norm_G: minus the mean over the group's G episodes (each counted once, however long), divided by their
  standard deviation (GRPO; ``scale=False`` keeps only the centring, as Dr. GRPO); norm_group: the same
  over all turns of the group.

No KL term: as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rewards import RewardTerms

STD_EPSILON = 1e-4  # as TRL's GRPO: a group whose rewards are all equal gets zero advantages


@dataclass(frozen=True)
class EpisodeWeights:
    episode: float = 1.0
    shaped: float = 0.5
    scale: bool = True


def episode_return(terms: list[RewardTerms]) -> float:
    """The final IoU's answer tier plus the mean format score of the episode's turns."""
    if not terms:
        raise ValueError("an episode has at least one turn")
    return terms[-1].answer + sum(t.format for t in terms) / len(terms)


def shaped_reward(terms: RewardTerms) -> float:
    return terms.region + terms.progress + terms.length


def group_advantages(episodes: list[list[RewardTerms]], weights: EpisodeWeights) -> list[list[float]]:
    """The advantage of every turn of one group's episodes, in the episodes' order."""
    returns = _normalized(np.array([episode_return(e) for e in episodes]), weights.scale)
    shaped = _normalized(np.array([shaped_reward(t) for e in episodes for t in e]), weights.scale)
    advantages, start = [], 0
    for index, episode in enumerate(episodes):
        turns = shaped[start : start + len(episode)]
        advantages.append((weights.episode * returns[index] + weights.shaped * turns).tolist())
        start += len(episode)
    return advantages


def _normalized(values: np.ndarray, scale: bool) -> np.ndarray:
    centred = values - values.mean()
    if not scale or values.size < 2:
        return centred
    return centred / (values.std(ddof=1) + STD_EPSILON)
