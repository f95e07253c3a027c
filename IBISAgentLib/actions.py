"""The action grammar of the agent: parse model text, format actions, map coordinates.

The model answers ``<think>…</think><action>…</action>`` and, when it terminates, ``<answer>…</answer>``.
Coordinates are normalized to [0, 1]. Training data wrote them as ``px / W`` for integer pixel
indices, so the exact inverse is ``round(x * W)`` clamped to ``[0, W - 1]``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

ActionKind = Literal["positive", "negative", "terminate"]

_TAG = r"<{0}>\s*(.*?)\s*</{0}>"
_THINK = re.compile(_TAG.format("think"), re.IGNORECASE | re.DOTALL)
_ACTION = re.compile(_TAG.format("action"), re.IGNORECASE | re.DOTALL)
_ANSWER = re.compile(_TAG.format("answer"), re.IGNORECASE | re.DOTALL)
_NUMBER = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?nan|[+-]?inf(?:inity)?)"
_POINT = re.compile(
    r"^(positive|negative)\s+point\s*\(\s*" + _NUMBER + r"\s*,\s*" + _NUMBER + r"\s*\)$",
    re.IGNORECASE,
)
# The prompt asks for "Terminate"; the authors' RL reward spells it "Termination". Both are accepted.
_TERMINATE = re.compile(r"^(terminate|termination)\.?$", re.IGNORECASE)


@dataclass(frozen=True)
class Action:
    """One agent or user move. ``x`` and ``y`` are normalized to [0, 1]; None for terminate."""

    kind: ActionKind
    x: float | None = None
    y: float | None = None

    @property
    def is_click(self) -> bool:
        return self.kind != "terminate"

    def key(self) -> tuple[str, str, str]:
        """Identity used by the repeated-action stop rule: kind plus coordinates as the model writes them."""
        if not self.is_click:
            return (self.kind, "", "")
        return (self.kind, f"{self.x:.4f}", f"{self.y:.4f}")


@dataclass(frozen=True)
class ParsedResponse:
    """The parts of one model response. ``error`` is set (and ``action`` None) when it cannot be used."""

    think: str | None
    action: Action | None
    answer: str | None
    error: str | None = None


class ActionParseError(ValueError):
    """An action string that is not in the grammar."""


def parse_action(text: str) -> Action:
    """Parse the inside of an ``<action>`` tag, e.g. ``Positive Point (0.5000, 0.2500)``."""
    body = " ".join(text.split())
    if _TERMINATE.match(body):
        return Action("terminate")
    match = _POINT.match(body)
    if not match:
        raise ActionParseError(
            f"action {body!r} is not 'Positive Point (x, y)', 'Negative Point (x, y)' or 'Terminate'"
        )
    kind = "positive" if match.group(1).lower() == "positive" else "negative"
    x, y = float(match.group(2)), float(match.group(3))
    for name, value in (("x", x), ("y", y)):
        if not math.isfinite(value):
            raise ActionParseError(f"coordinate {name}={match.group(2 if name == 'x' else 3)} is not a number")
        if not 0.0 <= value <= 1.0:
            raise ActionParseError(f"coordinate {name}={value} is outside [0, 1]")
    return Action(kind, x, y)


def parse_response(text: str) -> ParsedResponse:
    """Split a model response into think / action / answer. Never raises: problems go to ``error``."""
    think = _first(_THINK, text)
    answer = _first(_ANSWER, text)
    action_text = _first(_ACTION, text)
    if action_text is None:
        return ParsedResponse(think, None, answer, "no <action>…</action> in the response")
    try:
        action = parse_action(action_text)
    except ActionParseError as exc:
        return ParsedResponse(think, None, answer, str(exc))
    return ParsedResponse(think, action, answer)


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def format_action(action: Action) -> str:
    """The action as the model writes it, coordinates with four decimals."""
    if action.kind == "terminate":
        return "Terminate"
    name = "Positive" if action.kind == "positive" else "Negative"
    return f"{name} Point ({action.x:.4f}, {action.y:.4f})"


def format_response(think: str, action: Action, answer: str | None = None) -> str:
    """A complete response in the model's format (used for training targets and replay files)."""
    text = f"<think>{think}</think><action>{format_action(action)}</action>"
    if action.kind == "terminate":
        text += f"<answer>{answer or ''}</answer>"
    return text


def normalized_to_pixel(value: float, size: int) -> int:
    """Map a normalized coordinate to a pixel index: ``round(value * size)`` clamped to [0, size - 1]."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    return min(max(round(value * size), 0), size - 1)


def pixel_to_normalized(index: int, size: int) -> float:
    """Map a pixel index to a normalized coordinate the way the training data did: ``index / size``."""
    if not 0 <= index < size:
        raise ValueError(f"pixel index {index} is outside [0, {size - 1}]")
    return index / size
