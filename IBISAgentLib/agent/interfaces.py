"""The small interfaces between the rooms of the library.

A Policy turns one conversation turn (images + text) into model text. A SegmentationTool turns an RGB
image plus clicks into a mask, keeping its own image embedding and taking the previous low-resolution
logits as a prompt.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..imaging.volume_case import VolumeCase
    from ..tools.resolve import SegmenterSpec


@dataclass(frozen=True)
class Click:
    """A click in pixel indices of the 2D image: ``x`` is the column, ``y`` the row."""

    x: int
    y: int
    positive: bool


@dataclass
class PolicyRequest:
    """One turn as the model sees it. ``image`` is RGB uint8 with the current mask already drawn on it.

    ``mask``, ``clicks`` and ``case`` (the volume and slice the image is cut from) are the session state behind
    the picture; text models ignore them, simulated clickers (the oracle) read them.
    """

    system_prompt: str
    user_text: str
    image: np.ndarray
    max_new_tokens: int
    max_pixels: int
    min_pixels: int
    history: list[tuple[str, np.ndarray, str]] = field(default_factory=list)
    mask: np.ndarray | None = None
    clicks: tuple[Click, ...] = ()
    case: VolumeCase | None = None


class Policy(Protocol):
    """Turns a conversation turn into the model's raw text."""

    description: str

    def generate(self, request: PolicyRequest, cancel: threading.Event) -> str:
        """Return the model's text. Returns early (any text) once ``cancel`` is set."""
        ...


@dataclass(frozen=True)
class ToolResult:
    mask: np.ndarray
    score: float
    logits: np.ndarray


class SegmentationTool(Protocol):
    """A click-driven segmenter with a per-image embedding cache. ``spec`` names its SAM 2 family model
    (which can also propagate through volumes), or is None for a tool without one."""

    description: str
    spec: SegmenterSpec | None

    def set_image(self, image: np.ndarray, key: str | None = None) -> None:
        """Prepare ``image`` (H, W, 3 uint8); a no-op when it is the image already set.

        ``key`` names the image (callers that set the same image often pass one to skip hashing it).
        """
        ...

    def predict(self, clicks: list[Click], previous_logits: np.ndarray | None) -> ToolResult:
        """A mask for all clicks so far, prompted with the previous best low-resolution logits."""
        ...

    def mask_to_logits(self, mask: np.ndarray) -> np.ndarray:
        """Low-resolution logits that stand for ``mask``, to refine an existing mask."""
        ...

    def identity(self) -> dict[str, str]:
        """What the trace records of this tool (variant, image size, checkpoint)."""
        ...

    def release(self, key: str) -> None:
        """Forget what is kept for the image named ``key`` (its embedding): its session has ended."""
        ...
