"""The GRPO reward of the paper's RL stage, with the authors' bugs fixed.

Total = mean of five terms (constants below are the paper's):
- format: <think> and <action> present, the action in the grammar, <answer> present if and only if it
  terminates — 1, else 0;
- answer: tiers on the IoU after the move: 3 above 0.8, 2 above 0.7, 1 above 0.5, else 0;
- region: +1 when a positive click lands in the current mask's false negatives or a negative click in its
  false positives, else -1;
- progress: 1 when the move raises the IoU above the previous IoU, else 0;
- length: 1 up to step 5, then -0.2 per step beyond.

Fixed here: the previous IoU and the step index are really passed (the authors' progress term was 1
whenever IoU > 0 and their length term always 0); the mask after the click is computed exactly as
inference computes it (the same tool, all clicks, previous logits chained), not by a fresh SAM call; both
spellings "Terminate" and "Termination" are accepted; and a Terminate on a good mask is rewarded
(region +1, progress 1 when the mask is at or above TERMINATE_IOU), where the authors scored it like a
misplaced click.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..agent.actions import normalized_to_pixel, parse_response
from ..agent.interfaces import Click, SegmentationTool
from .oracle import iou

ANSWER_TIERS = ((0.8, 3.0), (0.7, 2.0), (0.5, 1.0))
SHORT_EPISODE_STEPS = 5
LENGTH_PENALTY_PER_STEP = 0.2
TERMINATE_IOU = 0.85  # a Terminate counts as well placed when the mask is at least this good


@dataclass(frozen=True)
class RewardState:
    """What the policy saw: its image, the clicks so far, the step index (1-based) and the ground truth."""

    image: np.ndarray
    ground_truth: np.ndarray
    clicks: tuple[Click, ...]
    step: int


@dataclass(frozen=True)
class RewardTerms:
    format: float
    answer: float
    region: float
    progress: float
    length: float

    @property
    def total(self) -> float:
        return (self.format + self.answer + self.region + self.progress + self.length) / 5.0


def replay_mask(tool: SegmentationTool, image: np.ndarray, clicks: tuple[Click, ...] | list[Click]) -> np.ndarray:
    """The mask inference produced for these clicks: each click added in turn, previous logits chained."""
    mask = np.zeros(image.shape[:2], bool)
    if not clicks:
        return mask
    tool.set_image(image)
    logits = None
    for count in range(1, len(clicks) + 1):
        result = tool.predict(list(clicks[:count]), logits)
        mask, logits = result.mask, result.logits
    return mask


def format_score(text: str) -> float:
    parsed = parse_response(text)
    if parsed.error is not None or parsed.think is None:
        return 0.0
    return 1.0 if (parsed.answer is not None) == (parsed.action.kind == "terminate") else 0.0


def answer_score(value: float) -> float:
    return next((reward for bound, reward in ANSWER_TIERS if value > bound), 0.0)


def length_score(step: int) -> float:
    return 1.0 if step <= SHORT_EPISODE_STEPS else -LENGTH_PENALTY_PER_STEP * (step - SHORT_EPISODE_STEPS)


def score_response(text: str, state: RewardState, tool: SegmentationTool) -> RewardTerms:
    """The five reward terms of one model response in ``state``."""
    gt = state.ground_truth.astype(bool)
    before = replay_mask(tool, state.image, state.clicks)
    previous_iou = iou(gt, before)
    parsed = parse_response(text)
    action = parsed.action
    if action is None:
        return RewardTerms(format_score(text), answer_score(previous_iou), -1.0, 0.0, length_score(state.step))
    if action.kind == "terminate":
        good = previous_iou >= TERMINATE_IOU
        return RewardTerms(
            format_score(text), answer_score(previous_iou), 1.0 if good else -1.0, 1.0 if good else 0.0,
            length_score(state.step),
        )  # fmt: skip
    height, width = gt.shape
    click = Click(
        normalized_to_pixel(action.x, width), normalized_to_pixel(action.y, height), action.kind == "positive"
    )
    after = replay_mask(tool, state.image, (*state.clicks, click))
    after_iou = iou(gt, after)
    in_error = (gt & ~before) if click.positive else (~gt & before)
    return RewardTerms(
        format=format_score(text),
        answer=answer_score(after_iou),
        region=1.0 if in_error[click.y, click.x] else -1.0,
        progress=1.0 if after_iou > previous_iou else 0.0,
        length=length_score(state.step),
    )


# -- trainer entry points ----------------------------------------------------------------------------

_TOOLS: dict[str, SegmentationTool] = {}


def tool_for(name: str) -> SegmentationTool:
    """``classical`` or a MedSAM2 checkpoint path; built once per process."""
    if name not in _TOOLS:
        if name == "classical":
            from ..tools.classical import RandomWalkerTool

            _TOOLS[name] = RandomWalkerTool()
        else:
            from ..tools.click_tool import SAM2Tool

            _TOOLS[name] = SAM2Tool(name)
    return _TOOLS[name]


def state_from_record(extra_info: dict[str, Any]) -> RewardState:
    """A RewardState from the ``extra_info`` our RL export writes (image and mask files, clicks, step)."""
    from ..imaging.images import read_mask, read_rgb_image

    image = read_rgb_image(extra_info["image"])
    ground_truth = read_mask(extra_info["mask"], image.shape[:2])
    clicks = tuple(Click(int(x), int(y), bool(label)) for x, y, label in extra_info["clicks"])
    return RewardState(image, ground_truth, clicks, int(extra_info["step"]))


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any]) -> dict:
    """verl's custom reward function (``custom_reward_function.name: compute_score``)."""
    terms = score_response(solution_str, state_from_record(extra_info), tool_for(extra_info.get("tool", "classical")))
    return {"score": terms.total, **{name: getattr(terms, name) for name in RewardTerms.__dataclass_fields__}}


def trl_reward(completions: list[Any], extra_info: list[dict[str, Any]], **_: Any) -> list[float]:
    """A reward function for TRL's GRPOTrainer (dataset column ``extra_info`` as our RL export writes it)."""
    scores = []
    for completion, info in zip(completions, extra_info, strict=True):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        scores.append(compute_score("ibisagent", text, None, info)["score"])
    return scores
