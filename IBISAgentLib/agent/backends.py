"""Backends open agent sessions. The local backend runs them in this process; the remote one
(``remote.py``) runs the very same sessions on a backend_server. The CLI and the Slicer module talk only
to a backend, so switching between the two is one setting."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..imaging.volume_case import VolumeCase
from ..remote.protocol import source_image
from ..tools.propagation import DEFAULT_PROPAGATION, PropagationCancelled, PropagationOptions, PropagationResult
from ..tools.resolve import SegmenterSpec
from .interfaces import Policy, SegmentationTool
from .session import DEFAULT_MAX_TURNS, AgentSession
from .trace import Step, Trace
from .volume_agent import CheckedPropagation, check_propagation, checked_propagation


class Session(Protocol):
    """What a backend's session offers (AgentSession's interface): the image it segments (the key slice, as
    RGB) and, for a slice of a volume, that volume."""

    image: np.ndarray
    case: VolumeCase | None
    steps: list[Step]
    stop_reason: str | None
    answer: str | None
    on_step: Callable[[Step], None] | None

    @property
    def mask(self) -> np.ndarray: ...

    def run(self) -> Trace: ...

    def step(self) -> Step | None: ...

    def add_click(self, x: int, y: int, positive: bool) -> Step: ...

    def undo(self) -> Step | None: ...

    def cancel(self) -> None: ...

    def trace(self) -> Trace: ...

    def close(self) -> None: ...


class Backend(Protocol):
    def open_session(
        self,
        source: np.ndarray | VolumeCase,
        instruction: str,
        *,
        initial_mask: np.ndarray | None = None,
        max_turns: int = DEFAULT_MAX_TURNS,
        on_step: Callable[[Step], None] | None = None,
        image_source: str | None = None,
    ) -> Session: ...

    def propagate(
        self,
        session: Session,
        options: PropagationOptions = DEFAULT_PROPAGATION,
        *,
        on_progress: Callable[[int, int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> np.ndarray: ...

    def propagate_and_check(
        self,
        session: Session,
        options: PropagationOptions = DEFAULT_PROPAGATION,
        check_budget: int | None = None,
        *,
        on_progress: Callable[[int, int, int], None] | None = None,
        on_check: Callable[[dict], None] | None = None,
        cancel: threading.Event | None = None,
        workers: int = 1,
    ) -> CheckedPropagation: ...


class LocalBackend:
    """Sessions in this process. ``policy_factory`` gives each session its policy (a shared model, or a
    fresh replay). The propagator is built on first use from ``propagator``, else from the click tool's own
    segmenter (a SAM 2 family model, or the weight-free classical one)."""

    def __init__(
        self,
        policy_factory: Callable[[], Policy],
        tool: SegmentationTool,
        device: str = "auto",
        propagator: SegmenterSpec | None = None,
        precision: str = "auto",
    ) -> None:
        self.policy_factory = policy_factory
        self.tool = tool
        self.device = device
        self.precision = precision  # the propagator's, as the click tool's (--precision)
        self.propagator_spec = propagator or tool.spec  # by default a SAM 2 family tool's own model
        self._propagator = None

    def open_session(
        self,
        source: np.ndarray | VolumeCase,
        instruction: str,
        *,
        initial_mask: np.ndarray | None = None,
        max_turns: int = DEFAULT_MAX_TURNS,
        on_step: Callable[[Step], None] | None = None,
        image_source: str | None = None,
    ) -> AgentSession:
        case = source if isinstance(source, VolumeCase) else None
        return AgentSession(
            source_image(source),
            instruction,
            self.policy_factory(),
            self.tool,
            initial_mask=initial_mask,
            max_turns=max_turns,
            on_step=on_step,
            image_source=image_source,
            case=case,
            models=self._propagator_identity() if case and self.propagator_spec else None,
        )

    def _propagator_identity(self) -> dict[str, str]:
        """What the trace records of the propagator: its model, and its precision, which is the click tool's."""
        precision = self.tool.identity().get("tool_precision")  # a shared tool tells it too; the classical none
        return self.propagator_spec.identity("propagator") | ({"propagator_precision": precision} if precision else {})

    def propagate(
        self,
        session: Session,
        options: PropagationOptions = DEFAULT_PROPAGATION,
        *,
        on_progress: Callable[[int, int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        """The session's mask grown through its volume, as a (k, j, i) bool array on the volume grid."""
        return self.propagate_with_keys(session, options, on_progress=on_progress, cancel=cancel).mask

    def propagate_with_keys(
        self,
        session: Session,
        options: PropagationOptions = DEFAULT_PROPAGATION,
        *,
        extra_keys: dict[int, np.ndarray] | None = None,
        on_progress: Callable[[int, int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> PropagationResult:
        """The propagation with its record of every slice, from the session's slice and any ``extra_keys``
        (slice index -> mask on the same axis: slices the check corrected)."""
        case = session.case
        if case is None:
            raise ValueError("propagation needs a session on a volume slice")
        return self.propagator.propagate(
            case.windowed, case.geometry, session.mask, options, extra_keys=extra_keys, on_progress=on_progress,
            cancel=cancel,
        )  # fmt: skip

    def propagate_and_check(
        self,
        session: Session,
        options: PropagationOptions = DEFAULT_PROPAGATION,
        check_budget: int | None = None,
        *,
        on_progress: Callable[[int, int, int], None] | None = None,
        on_check: Callable[[dict], None] | None = None,
        cancel: threading.Event | None = None,
        workers: int = 1,
    ) -> CheckedPropagation:
        """The propagation with a record of every slice and its flags; with ``check_budget``, the volume agent's
        check then re-runs the agent on at most that many flagged slices (``workers`` at once) and propagates
        again from those it corrected, each check reported to ``on_check`` (a ``CheckRecord`` as a dict)."""
        case = session.case
        if case is None:
            raise ValueError("propagation needs a session on a volume slice")
        first, last = options.span(case.geometry)

        def keyed(extra: dict[int, np.ndarray]) -> PropagationResult:
            return self.propagate_with_keys(session, options, extra_keys=extra, on_progress=on_progress, cancel=cancel)

        sessions = self.for_threads() if workers > 1 else self
        instruction, turns = session.trace().instruction, getattr(session, "max_turns", DEFAULT_MAX_TURNS)
        negatives = [(c.y, c.x) for c in getattr(session, "clicks", []) if not c.positive]
        result, checks, flags = check_propagation(
            keyed, lambda slice_case, mask: sessions.open_session(slice_case, instruction, initial_mask=mask,
                                                                  max_turns=turns),
            case, keyed({}), negatives, check_budget or 0,
            on_check=None if on_check is None else lambda record: on_check(record.to_dict()), cancel=cancel,
            workers=workers,
        )  # fmt: skip
        if cancel is not None and cancel.is_set():
            raise PropagationCancelled()
        return checked_propagation(result, first, last, checks if check_budget is not None else None, flags)

    def for_threads(self) -> LocalBackend:
        """The same models for sessions on several threads at once (the volume agent's ``workers``): the click
        tool behind one lock (``SharedTool``); the policy must answer several threads itself (see
        ``models.loading.spec_serves_threads``)."""
        from ..tools.shared import SharedTool

        tool = SharedTool(self.tool)
        twin = LocalBackend(self.policy_factory, tool, self.device, self.propagator_spec, self.precision)
        twin._propagator = self._propagator
        return twin

    @property
    def propagator(self):  # -> SAM2Propagator
        if self._propagator is None:
            if self.propagator_spec is None:
                raise ValueError(f"{self.tool.description} cannot propagate: choose a propagator")
            self._propagator = self.propagator_spec.propagator(self.device, self.precision)
        return self._propagator
