"""The clinician's workflow, free of any UI toolkit: the 3D Slicer module renders this controller's state
and forwards clicks and button presses to it.

Model work (agent turns, corrections, propagation) runs on one background thread; everything it
produces comes back as events through a queue that the UI drains on its own thread with ``poll()``
(Slicer: from a QTimer), which is also where the controller's visible state changes. A run that fails or
is cancelled ends with a ``revert`` event: the UI puts the target segment back as it was before the run.

A mask event replaces only some slices of the target segment: the agent's slice, or the propagated
range. The UI turns it into the whole new segment with ``segment_after(event, segment)`` from the segment
as it is when the event arrives, so edits made meanwhile on other slices are kept.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import Backend, Session
from .geometry import SliceGeometry
from .propagation import PropagationCancelled
from .trace import Step
from .volume_case import VolumeCase

# Markup colours (RGB 0-1): the agent's clicks in green/red, the clinician's in cyan/orange.
COLORS = {
    ("agent", True): (0.13, 0.80, 0.13),
    ("agent", False): (0.90, 0.15, 0.15),
    ("user", True): (0.10, 0.75, 0.95),
    ("user", False): (1.00, 0.55, 0.00),
}


class ControllerBusy(RuntimeError):
    """Another operation is still running; wait for it or cancel it."""


@dataclass(frozen=True)
class Marker:
    """A click to show: where (RAS, millimetres), its number and polarity as a label, its colour."""

    number: int
    positive: bool
    source: str
    ras: tuple[float, float, float]

    @property
    def label(self) -> str:
        return f"{self.number}{'+' if self.positive else '−'}"

    @property
    def color(self) -> tuple[float, float, float]:
        return COLORS[(self.source, self.positive)]


@dataclass
class Event:
    kind: str  # opened, step, undone, finished, progress, propagated, revert, error, idle
    step: Step | None = None
    message: str = ""
    plane: np.ndarray | None = None  # the agent's slice (rows, columns), for step, undone and finished
    mask: np.ndarray | None = None  # (k, j, i) bool on the volume grid, for propagated: only ``slices`` count
    slices: tuple[int, int] | None = None  # first, last slice index (along the slice normal) the event replaces
    progress: tuple[int, int] | None = None
    operation: int = 0  # which command produced it: events of a closed or replaced operation are dropped


@dataclass
class ControllerState:
    markers: list[Marker] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    busy: bool = False
    stop_reason: str | None = None
    answer: str | None = None


class InteractionController:
    """``backend`` is a Backend, or a callable that builds one (on the worker thread, at the first ``open``:
    loading models or connecting to a server never blocks the UI)."""

    def __init__(self, backend: Backend | Callable[[], Backend]) -> None:
        self.backend: Backend | None = None if callable(backend) and not hasattr(backend, "open_session") else backend
        self._backend_factory = backend if self.backend is None else None
        self.state = ControllerState()
        self.case: VolumeCase | None = None
        self.session: Session | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._cancel = threading.Event()
        self._operation = 0

    # -- commands (UI thread) ----------------------------------------------------------------------

    def open(self, case: VolumeCase, instruction: str, max_turns: int = 20, segment: np.ndarray | None = None) -> None:
        """Start a session on ``case``'s key slice (uploading the volume when the backend is remote). The
        previous session is closed first: nothing of it can act on the new slice, even if opening fails.

        ``segment`` is the target segment as it is now ((k, j, i) on the volume grid): its voxels on the key
        slice are where the session starts (the agent sees and refines them).
        """
        if self.state.busy:
            raise ControllerBusy("IBISAgent is still working: wait for it or press Cancel")
        if segment is not None and segment.shape != case.windowed.shape:
            raise ValueError(f"the segment is {segment.shape}, the volume {case.windowed.shape}")
        on_slice = None if segment is None else case.geometry.extract(segment.astype(bool))
        initial_mask = np.array(on_slice) if on_slice is not None and on_slice.any() else None
        previous, self.session, self.case = self.session, None, None
        self.state = ControllerState()

        def job() -> None:
            _close(previous)
            if self.backend is None:
                self.backend = self._backend_factory()
            session = self.backend.open_session(
                case, instruction, initial_mask=initial_mask, max_turns=max_turns, on_step=self._on_step
            )
            self.case, self.session = case, session
            self._emit(Event("opened", message=f"{case.geometry.axis} slice {case.geometry.index}"))

        self._launch(job)

    def run(self) -> None:
        self._launch(lambda: self._agent(self._session().run))

    def step(self) -> None:
        self._launch(lambda: self._agent(self._session().step))

    def click(self, ras: tuple[float, float, float], positive: bool) -> None:
        """A correction at a RAS point, which must lie on the agent's slice."""
        column, row = self.ras_to_pixel(ras)
        self._launch(lambda: self._session().add_click(column, row, positive))

    def undo(self) -> None:
        def job() -> None:
            session = self._session()
            step = session.undo()
            self._emit(self._on_slice("undone", session.mask, step=step))

        self._launch(job)

    def propagate(self, first: int | None = None, last: int | None = None, stop_after_empty: int = 3,
                  largest_component: bool = False) -> None:  # fmt: skip
        def job() -> None:
            try:
                mask = self.backend.propagate(
                    self._session(), first=first, last=last, stop_after_empty=stop_after_empty,
                    largest_component=largest_component, cancel=self._cancel,
                    on_progress=lambda done, total, index: self._emit(Event("progress", progress=(done, total))),
                )  # fmt: skip
            except PropagationCancelled:
                self._emit(Event("revert", message="propagation cancelled"))
                return
            count = self._geometry().count
            span = (0 if first is None else first, count - 1 if last is None else last)
            self._emit(Event("propagated", mask=mask, slices=span, message=f"{int(mask.sum())} voxels"))

        self._launch(job)

    def cancel(self) -> None:
        self._cancel.set()
        if self.session is not None:
            self.session.cancel()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what runs and close the session (frees it on a server at once). The cancelled operation
        gets ``timeout`` seconds to stop; whatever it reports later is dropped, and the controller is idle."""
        self.cancel()
        if self._worker is not None:
            self._worker.join(timeout=timeout)
        self._operation += 1  # poll() drops whatever the cancelled operation reports from now on
        self.state.busy = False
        _close(self.session)
        self.session = None

    # -- state (UI thread) -------------------------------------------------------------------------

    def poll(self, wait: float = 0.0) -> list[Event]:
        """Drain the events produced since the last call and apply them to ``state``.

        With ``wait``, while an operation runs, keep collecting its events for up to that many seconds, or
        until it ends. A host whose main thread keeps Python's GIL while it sits in its own event loop (3D
        Slicer does) lends the worker thread that time: the worker runs Python only while the main thread
        waits here.
        """
        events: list[Event] = []
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0 and self.state.busy:
                    event = self._events.get(timeout=remaining)
                else:
                    event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event.operation != self._operation:
                continue  # from an operation that was closed: nothing of it may reach the new one
            self._apply(event)
            events.append(event)

    def segment_after(self, event: Event, segment: np.ndarray) -> np.ndarray:
        """The target segment once ``event`` is applied: ``segment`` (as it is now, (k, j, i) on the volume
        grid) with the event's slices replaced. Everything else in it is kept."""
        geometry = self._geometry()
        result = np.array(segment, dtype=bool)
        if event.plane is not None:
            geometry.insert(result, event.plane)
        elif event.mask is not None and event.slices is not None:
            geometry.slab(result, *event.slices)[...] = geometry.slab(event.mask, *event.slices)
        return result

    def wait(self, timeout: float = 600.0) -> list[Event]:
        """Block until the running operation ends, then ``poll()`` (for scripts and tests)."""
        if self._worker is not None:
            self._worker.join(timeout)
        return self.poll()

    def ras_to_pixel(self, ras: tuple[float, float, float]) -> tuple[int, int]:
        geometry = self._geometry()
        ijk = geometry.ras_to_ijk(np.asarray(ras, dtype=float))
        if abs(ijk[geometry.normal_axis] - geometry.index) > 0.5:
            raise ValueError(
                f"the click is on {geometry.axis} slice {ijk[geometry.normal_axis]:.1f}, not on the agent's slice "
                f"{geometry.index}: go back to that slice to correct it"
            )
        column, row = (round(v) for v in geometry.ijk_to_pixel(ijk))  # the voxel whose centre is nearest
        if not (0 <= column < geometry.width and 0 <= row < geometry.height):
            raise ValueError("the click is outside the volume")
        return column, row

    def trace_json(self) -> str:
        return self._session().trace().to_json()

    # -- internals ---------------------------------------------------------------------------------

    def _launch(self, job: Callable[[], Any]) -> None:
        if self.state.busy:
            raise ControllerBusy("IBISAgent is still working: wait for it or press Cancel")
        if self._worker is not None:
            self._worker.join()  # it has posted "idle" already and is only returning
        self.state.busy = True
        self._cancel.clear()
        self._operation += 1

        def guarded() -> None:
            try:
                job()
            except Exception as exc:  # every failure reaches the UI as an event, never as a silent thread death
                self._emit(Event("error", message=str(exc) or exc.__class__.__name__))
                self._emit(Event("revert", message="the operation failed"))
            finally:
                self._emit(Event("idle"))

        self._worker = threading.Thread(target=guarded, name="ibisagent-controller", daemon=True)
        self._worker.operation = self._operation  # type: ignore[attr-defined]
        self._worker.start()

    def _emit(self, event: Event) -> None:
        """Queue an event from the worker, marked with the operation that thread runs."""
        event.operation = getattr(threading.current_thread(), "operation", self._operation)
        self._events.put(event)

    def _agent(self, action: Callable[[], Any]) -> None:
        session = self._session()
        before = len(session.steps)
        action()
        reason = session.stop_reason
        if reason in ("cancelled", "error"):
            # The segment goes back to how it was before the run, and so does the session.
            while len(session.steps) > before:
                session.undo()
            session.stop_reason = reason
            self._emit(Event("revert", message=f"the run ended: {reason}"))
            self._emit(Event("finished", message=reason))
            return
        self._emit(self._on_slice("finished", session.mask, message=reason or ""))

    def _on_step(self, step: Step) -> None:
        self._emit(self._on_slice("step", step.mask, step=step))

    def _on_slice(self, kind: str, plane: np.ndarray, **fields: Any) -> Event:
        index = self._geometry().index
        return Event(kind, plane=plane, slices=(index, index), **fields)

    def _apply(self, event: Event) -> None:
        state = self.state
        if event.kind == "idle":
            state.busy = False
        elif event.kind == "step" and event.step is not None:
            state.markers = self._markers()
            state.log.append(_describe(event.step))
        elif event.kind == "undone" and event.step is not None:
            state.markers = self._markers()
            state.log.append(f"undone: step {event.step.turn}")
        elif event.kind == "finished":
            state.stop_reason = event.message
            state.answer = self.session.answer if self.session is not None else None
            state.log.append(f"stopped: {event.message}" + (f" — {state.answer}" if state.answer else ""))
        elif event.kind in ("error", "revert"):
            if event.kind == "revert":
                state.markers = self._markers()
            state.log.append(f"{event.kind}: {event.message}")

    def _markers(self) -> list[Marker]:
        """The clicks of the session's current steps, numbered in order."""
        if self.session is None or self.case is None:
            return []
        clicks = [
            s for s in self.session.steps if s.ijk is not None and s.action is not None and s.action.kind != "terminate"
        ]
        geometry = self.case.geometry
        return [
            Marker(
                n,
                s.action.kind == "positive",
                s.source,
                tuple(float(v) for v in geometry.ijk_to_ras(np.asarray(s.ijk))),
            )  # type: ignore[arg-type]
            for n, s in enumerate(clicks, start=1)
        ]

    def _session(self) -> Session:
        if self.session is None:
            raise RuntimeError("no session: open one first")
        return self.session

    def _geometry(self) -> SliceGeometry:
        if self.case is None:
            raise RuntimeError("no volume: open a session first")
        return self.case.geometry


def _close(session: Session) -> None:
    """Close a session (a remote one frees the server's memory at once)."""
    with contextlib.suppress(Exception):  # a session already gone on the server needs no closing
        session.close()


def _describe(step: Step) -> str:
    who = "agent" if step.source == "agent" else "you"
    if step.action is None:
        return f"{step.turn}. {who}: {step.error or 'no action'}"
    move = step.action.kind if step.action.kind == "terminate" else f"{step.action.kind} click"
    text = f"{step.turn}. {who}: {move}"
    if step.think:
        text += f" — {step.think}"
    return text
