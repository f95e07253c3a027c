"""A multi-turn rollout environment on the product's own session, for on-policy RL.

The trainer's model writes one response per turn; the environment applies it through the same
AgentSession the CLI runs (same prompts, overlay, click history, logits chaining and stop rules) and
returns the reward terms of that move and the next observation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..agent.interfaces import PolicyRequest, SegmentationTool
from ..agent.session import AgentSession
from ..agent.trace import Trace
from .rewards import RewardState, RewardTerms, score_response


class _Pending:
    """The policy the session asks: it answers with the text the trainer handed to ``step``."""

    description = "external (rollout)"

    def __init__(self) -> None:
        self.text: str | None = None
        self.request: PolicyRequest | None = None

    def generate(self, request: PolicyRequest, cancel: threading.Event) -> str:
        text, self.text = self.text, None
        if text is None:
            raise RuntimeError("the rollout environment was stepped without a response")
        return text


@dataclass
class Observation:
    system_prompt: str
    user_text: str
    image: np.ndarray


class RolloutEnv:
    def __init__(
        self, image: np.ndarray, ground_truth: np.ndarray, instruction: str, tool: SegmentationTool, max_turns: int = 20
    ) -> None:
        self.ground_truth = ground_truth.astype(bool)
        self.tool = tool
        self._policy = _Pending()
        self.session = AgentSession(image, instruction, self._policy, tool, max_turns=max_turns)
        self.max_turns = max_turns

    def observation(self) -> Observation:
        request = self.session.next_request()
        return Observation(request.system_prompt, request.user_text, request.image)

    def step(self, response: str) -> tuple[Observation | None, RewardTerms, bool]:
        """Apply one model response; returns (next observation or None when done, reward terms, done)."""
        state = RewardState(self.session.image, self.ground_truth, tuple(self.session.clicks), self.turns + 1)
        terms = score_response(response, state, self.tool)
        self._policy.text = response
        self.session.step()
        if not self.session.done and self.turns >= self.max_turns:
            self.session.stop_reason = "max_turns"
        done = self.session.done
        return (None if done else self.observation()), terms, done

    @property
    def turns(self) -> int:
        return sum(1 for s in self.session.steps if s.source == "agent")

    def trace(self) -> Trace:
        return self.session.trace()
