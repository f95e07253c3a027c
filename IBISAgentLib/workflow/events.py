"""What the driver's worker reports, one type per kind. ``poll()`` applies them to the target segment, the
record and the state, then hands them to the front end (which needs them only for notices: ``Failed``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..agent.trace import Step


@dataclass
class Event:
    operation: int = field(default=0, kw_only=True)  # the command that produced it; a closed one's are dropped


@dataclass
class Opened(Event):
    axis: str
    index: int


@dataclass
class SliceChanged(Event):
    """The session's mask on the agent's slice is now ``plane`` (after a step, or after an undo)."""

    cause: Literal["step", "undone"]
    plane: np.ndarray
    step: Step | None


@dataclass
class Finished(Event):
    reason: str | None
    answer: str | None


@dataclass
class Progressed(Event):
    done: int
    total: int


@dataclass
class Searched(Event):
    """The search looked at one slice (a ``volume_agent.SearchRecord`` as a dict: index, verdict, text, area)."""

    record: dict


@dataclass
class Checked(Event):
    """The check re-ran the agent on one propagated slice (a ``volume_agent.CheckRecord`` as a dict)."""

    record: dict


@dataclass
class Propagated(Event):
    """The 3D result: only slices ``first``..``last`` of ``mask`` count (along the slice normal). ``slices`` has a
    record per propagated slice (index, area, score, agreement, flags) where the backend gives them; ``replaced``
    the trace's records of the session's previous propagation (propagation, checks), for an undo to give back."""

    mask: np.ndarray
    first: int
    last: int
    slices: list[dict] = field(default_factory=list)
    replaced: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reverted(Event):
    """The operation failed or was cancelled: the target goes back to how it was before it."""

    reason: str


@dataclass
class Failed(Event):
    message: str


@dataclass
class TraceReady(Event):
    """The session's trace JSON as the operation left it."""

    text: str


@dataclass
class Idle(Event):
    """The operation has ended; the driver takes commands again."""
