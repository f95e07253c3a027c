"""Prompt profiles: the exact input contract of a fine-tuned model, kept as data.

A profile fixes what the model was trained on: the system prompt, the turn-1 and refinement user
messages, the mask overlay, the image size cap and the decoding settings. Another fine-tune ships its
own profile (a JSON file with the same fields) instead of code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

# Byte-identical to the authors' inference script; the released IBIS weights were tuned on it.
IBIS_V1_SYSTEM_PROMPT = (
    "You are a precise and expert medical segmentation agent. Your mission is to accurately segment a "
    "target object in a medical image through a series of interactive point placements. You will be given "
    "an image and an instruction. You must carefully analyze the image state. If there is no mask, it is "
    "an initialization step. Your goal is to place a Positive Point on a clear, representative part of the "
    "target object. If a semi-transparent green mask is present, it is a refinement step. Your goal is to "
    "improve its accuracy. Place a Positive Point on a region of the target that the mask has missed, or a "
    "Negative Point on an area the mask has incorrectly included.\nYour response must strictly follow this "
    "structure: first, your detailed reasoning within <think> tags, and then your single, decisive move "
    "within <action> tags. The only valid actions are Positive Point (x, y), Negative Point (x, y), or "
    "Terminate. All coordinates (x, y) must be normalized to a 0.0-1.0 scale and formatted to four decimal "
    "places, for example: Positive Point (0.5000, 0.2500). Only use Terminate when the mask perfectly "
    "aligns with the target boundary. If you Terminate, you must also append a final, concise summary in "
    "an <answer> tag."
)


@dataclass(frozen=True)
class PromptProfile:
    """Everything a model's training fixed about its input. ``{instruction}`` is filled in per run."""

    name: str
    system_prompt: str
    first_turn_template: str
    refinement_template: str
    format_reminder: str
    overlay_color: tuple[int, int, int]
    overlay_alpha: float
    max_pixels: int
    min_pixels: int
    max_new_tokens: int
    send_history: bool

    def user_text(self, instruction: str, refinement: bool) -> str:
        template = self.refinement_template if refinement else self.first_turn_template
        return template.format(instruction=instruction)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


IBIS_V1 = PromptProfile(
    name="ibis-v1",
    system_prompt=IBIS_V1_SYSTEM_PROMPT,
    # Their script sends the literal string "<image>" as text after the real image.
    first_turn_template="<image>{instruction}",
    refinement_template=(
        '<image>This is a refinement step. User\'s original query: "{instruction}". Do you think the image '
        "with semi-transparent green mask need further segmentation? If so, please use point action; "
        "otherwise, use Terminate action."
    ),
    format_reminder=(
        "Your previous answer could not be read. Answer with <think>…</think> then exactly one "
        "<action>Positive Point (x, y)</action>, <action>Negative Point (x, y)</action> or "
        "<action>Terminate</action>, coordinates in [0, 1] with four decimals."
    ),
    overlay_color=(34, 139, 34),
    overlay_alpha=0.4,
    # Training images were capped at 512 x 512 pixels; 3136 = 56 x 56 is Qwen2.5-VL's own minimum.
    max_pixels=262_144,
    min_pixels=3_136,
    max_new_tokens=512,
    send_history=False,
)

_PROFILES = {IBIS_V1.name: IBIS_V1}


def get_profile(name_or_path: str) -> PromptProfile:
    """A built-in profile by name, or a profile JSON file."""
    if name_or_path in _PROFILES:
        return _PROFILES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"unknown prompt profile {name_or_path!r}: not one of {sorted(_PROFILES)} nor a JSON file")
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        data["overlay_color"] = tuple(data["overlay_color"])
        return PromptProfile(**data)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"prompt profile {path} is incomplete or has unknown fields: {exc}") from exc
