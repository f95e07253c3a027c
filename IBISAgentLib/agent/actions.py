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

# Tags are found by one left-to-right scan (linear in the text, whatever the model wrote); a section runs from
# its opening tag to the closing tag that balances it (a nested tag of the same name opens a level, so an
# action written inside a nested <think> stays reasoning), and other tags inside a section are its text.
# Tag names, like coordinates and "Terminate", match ASCII letters only, case-insensitively: a look-alike
# (the Kelvin sign in <thin\u212a>, the dotless i in Term\u0131nate) is not the word.
_TAG = re.compile(r"<(/?)(think|action|answer)>", re.IGNORECASE | re.ASCII)
# Coordinates: ASCII digits only. A sign, nan and inf are matched so they can be refused with a reason.
_NUMBER = r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?nan|[+-]?inf(?:inity)?)"
_POINT = re.compile(
    r"(positive|negative) point ?\( ?" + _NUMBER + r" ?, ?" + _NUMBER + r" ?\)",
    re.IGNORECASE | re.ASCII,
)
# The prompt asks for "Terminate"; the authors' RL reward spells it "Termination". Both are accepted.
_TERMINATE = re.compile(r"(terminate|termination)\.?", re.IGNORECASE | re.ASCII)


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
    if _TERMINATE.fullmatch(body):
        return Action("terminate")
    match = _POINT.fullmatch(body)
    if not match:
        shown = body if len(body) <= 80 else body[:80] + "…"
        raise ActionParseError(
            f"action {shown!r} is not 'Positive Point (x, y)', 'Negative Point (x, y)' or 'Terminate'"
        )
    kind = "positive" if match.group(1).lower() == "positive" else "negative"
    x, y = (_coordinate(name, match.group(group)) for name, group in (("x", 2), ("y", 3)))
    return Action(kind, x, y)


def _coordinate(name: str, token: str) -> float:
    value = float(token)
    shown = token if len(token) <= 20 else token[:20] + "…"
    if not math.isfinite(value):
        raise ActionParseError(f"coordinate {name}={shown} is not a number")
    if token[0] in "+-" or value > 1.0:
        raise ActionParseError(f"coordinate {name}={shown} is outside [0, 1] (written without a sign)")
    return value


def parse_response(text: str) -> ParsedResponse:
    """Split a model response into think / action / answer. Never raises: problems go to ``error``.

    The action is the first ``<action>`` section that stands outside ``<think>``: an action the model only
    mentions while reasoning is not taken. Linear in the length of ``text``.
    """
    sections, unclosed = _sections(text)
    think, answer = sections.get("think"), sections.get("answer")
    action_text = sections.get("action")
    if action_text is None:
        where = f"; <{unclosed}> is never closed" if unclosed else ""
        return ParsedResponse(think, None, answer, f"no <action>…</action> outside <think> in the response{where}")
    try:
        action = parse_action(action_text)
    except ActionParseError as exc:
        return ParsedResponse(think, None, answer, str(exc))
    return ParsedResponse(think, action, answer)


def _sections(text: str) -> tuple[dict[str, str], str | None]:
    """The first complete top-level section of each tag (stripped), and the tag left open at the end, if any."""
    found: dict[str, str] = {}
    open_name, body_start, depth = None, 0, 0
    for tag in _TAG.finditer(text):
        closing, name = tag.group(1) == "/", tag.group(2).lower()
        if open_name is None:
            if not closing:
                open_name, body_start, depth = name, tag.end(), 1
        elif name == open_name:
            depth += -1 if closing else 1
            if depth == 0:
                found.setdefault(name, text[body_start : tag.start()].strip())
                open_name = None
    return found, open_name


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
