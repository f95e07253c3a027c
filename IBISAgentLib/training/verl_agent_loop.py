"""Our episodes inside verl (0.9.1) as an agent loop, its multi-turn rollout interface, for GRPO at scale.

verl's workers build this class from ``verl_agent_loop.yaml`` for each dataset row of ``episodes.parquet``
(``ibisagent synth`` writes it: one row a start). ``run`` plays one episode with ``RolloutEnv``, the
product's own session, asking verl's rollout server (vLLM) for each turn, and returns one output per turn:
exactly the product's prompt (system prompt, the slice with the episode's own mask drawn on it, the user
text) and the sampled answer. verl's V1 trainer (``trainer.use_v1=True``) keeps every turn as a training row
and gives all turns of an episode the GRPO advantage of the episode's reward, normalized over the
``rollout.n`` episodes of the start. Per-turn credit, as ``ibisagent train grpo`` gives, is not possible
there: V1 copies the last turn's reward to the others. So the episode's reward is the return of
``episodes.py`` plus ``shaped_weight`` times the mean shaped reward of its turns.

Imported by verl's workers only (it imports verl, which pins its own transformers; see
``scripts/install_verl.sh``).
"""

from __future__ import annotations

import functools
from typing import Any
from uuid import uuid4

import numpy as np
from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput

from ..agent.interfaces import SegmentationTool
from ..agent.prompts import PromptProfile
from ..imaging.images import read_mask, read_rgb_image
from ..tools.shared import SharedTool
from .episodes import EpisodeWeights, episode_return, shaped_reward
from .oracle import iou
from .rewards import RewardTerms, tool_for
from .rollout import RolloutEnv

TERM_NAMES = tuple(RewardTerms.__dataclass_fields__)


@functools.cache
def shared_tool(name: str) -> SegmentationTool:
    """One tool per worker process for all its concurrent episodes (they step on executor threads)."""
    return SharedTool(tool_for(name))


class IBISAgentLoop(AgentLoopBase):
    def __init__(
        self,
        *args: Any,
        max_turns: int = 8,
        episode_weight: float = 1.0,
        shaped_weight: float = 0.5,
        max_new_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("tools", None)  # verl hands every loop its tool list; our actions are clicks, not tool calls
        kwargs.pop("name", None)
        super().__init__(*args, **kwargs)
        if not self.config.trainer.get("use_v1", True):
            raise ValueError("the IBISAgent loop returns one output per turn, which only verl's V1 trainer takes")
        self.max_turns = max_turns
        self.weights = EpisodeWeights(episode_weight, shaped_weight)
        self.max_new_tokens = max_new_tokens
        self.response_length = self.rollout_config.response_length

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> list[AgentLoopOutput]:
        info = kwargs["extra_info"]
        image = read_rgb_image(info["image"])
        truth = read_mask(info["mask"], image.shape[:2])
        tool = shared_tool(info.get("tool", "classical"))
        env = RolloutEnv(image, truth, info["instruction"], tool, max_turns=self.max_turns)
        request_id = uuid4().hex
        outputs: list[AgentLoopOutput] = []
        terms: list[RewardTerms] = []
        profile = env.session.profile
        observation = env.observation()
        try:
            while observation is not None:
                picture = await self._as_model_sees(observation.image, profile)
                messages = [
                    {"role": "system", "content": observation.system_prompt},
                    {"role": "user", "content": [{"type": "image", "image": picture},
                                                 {"type": "text", "text": observation.user_text}]},
                ]  # fmt: skip
                prompt_ids = await self.ct_build_initial_tokens(messages, images=[picture])
                params = dict(sampling_params)  # the server pops keys from it
                params["max_tokens"] = self.max_new_tokens or profile.max_new_tokens
                answer = await self.server_manager.generate(
                    request_id=request_id, prompt_ids=prompt_ids, sampling_params=params, image_data=[picture]
                )
                tokens = list(answer.token_ids)[: self.response_length]
                logprobs = list(answer.log_probs)[: self.response_length] if answer.log_probs else None
                outputs.append(
                    AgentLoopOutput(
                        prompt_ids=prompt_ids,
                        response_ids=tokens,
                        response_mask=[1] * len(tokens),
                        response_logprobs=logprobs,
                        multi_modal_data={"images": [picture]},
                        num_turns=2,
                        metrics={},
                    )
                )
                text = self.tokenizer.decode(answer.token_ids, skip_special_tokens=True)
                observation, turn_terms, _ = await self.loop.run_in_executor(None, env.step, text)
                terms.append(turn_terms)
        finally:
            env.session.close()
        reward = self.weights.episode * episode_return(terms) + self.weights.shaped * float(
            np.mean([shaped_reward(t) for t in terms])
        )
        means = {f"mean_{name}": float(np.mean([getattr(t, name) for t in terms])) for name in TERM_NAMES}
        summary = {
            "episode_turns": len(terms),
            "final_iou": float(iou(env.ground_truth, env.session.mask)),
            "episode_return": episode_return(terms),
            **means,
        }
        for output in outputs:
            output.reward_score = reward
            output.extra_fields["reward_extra_info"] = summary
            output.extra_fields["stop_reason"] = env.session.stop_reason or ""
        return outputs

    async def _as_model_sees(self, image: np.ndarray, profile: PromptProfile) -> Image.Image:
        """The overlay resized as the product's policy resizes it (qwen_vl_utils, the profile's pixel bounds)."""
        block = {
            "type": "image",
            "image": Image.fromarray(image),
            "max_pixels": profile.max_pixels,
            "min_pixels": profile.min_pixels,
        }
        vision = await self.process_multi_modal_info([{"role": "user", "content": [block]}])
        return vision["images"][0]
