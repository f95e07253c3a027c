"""The workflow driver: the one place the clinician's workflow lives.

A front end starts a session on a volume (a VolumeCase on the slice its view shows), a target segment
(a SegmentPort) and a record (a RecordPort), then forwards button presses and clicks. Model work (opening,
agent turns, corrections, propagation) runs on one background thread and reports typed events through a
queue; the front end calls ``poll()`` from its own thread (Slicer: a QTimer; the web app: its event loop),
and there the driver writes results into the target segment, puts it back after a failure or cancel,
keeps the markers and the trace in the record, and updates ``state`` for the front end to render.

A result replaces only some slices of the target segment: the agent's slice, or the propagated range. It is
applied to the segment as it is when it arrives, so edits made meanwhile on other slices are kept.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..agent.backends import Backend, Session
from ..agent.trace import Step
from ..agent.volume_agent import search_key_slice
from ..imaging.geometry import SliceGeometry
from ..imaging.volume_case import VolumeCase
from ..tools.propagation import DEFAULT_PROPAGATION, PropagationCancelled, PropagationOptions
from .choice import BackendChoice
from .events import (
    Checked,
    Event,
    Failed,
    Finished,
    Idle,
    Opened,
    Progressed,
    Propagated,
    Reverted,
    Searched,
    SliceChanged,
    TraceReady,
)
from .markers import Marker, markers_of
from .ports import RecordPort, SegmentPort

PROPAGATION_RECORDS = ("propagation", "checks")  # what a propagation adds to the trace


class DriverBusy(RuntimeError):
    """Another operation is still running; wait for it or cancel it."""


@dataclass
class DriverState:
    """What a front end renders."""

    markers: list[Marker] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    busy: bool = False
    activity: str = ""  # what the worker is doing, while busy ("Loading the models", "Propagating")
    stop_reason: str | None = None
    answer: str | None = None
    progress: tuple[int, int] | None = None  # propagation: slices done, total
    slices: list[dict] = field(default_factory=list)  # the last propagation's per-slice records, with flags

    @property
    def status(self) -> str:
        if self.busy:
            done = f" {self.progress[0]} of {self.progress[1]} slices" if self.progress else ""
            return f"{self.activity or 'Working'}…{done}"
        if self.stop_reason:
            return f"Stopped: {self.stop_reason}" + (f" — {self.answer}" if self.answer else "")
        return "Ready."


class WorkflowDriver:
    """``build_backend`` turns a BackendChoice into a Backend; it runs on the worker thread (loading models or
    connecting never blocks the UI), once per choice: the same choice keeps its backend."""

    def __init__(
        self,
        build_backend: Callable[[BackendChoice], Backend] = BackendChoice.build,
        on_event: Callable[[], None] | None = None,
    ) -> None:
        """``on_event`` is called on the worker thread after each event is queued: a host with an event loop
        wakes its ``poll()`` with it instead of polling on a timer (it must only hand over, never touch state)."""
        self.build_backend = build_backend
        self.on_event = on_event
        self.state = DriverState()
        self.case: VolumeCase | None = None
        self.session: Session | None = None
        self.target: SegmentPort | None = None
        self.record: RecordPort | None = None
        self._backend: Backend | None = None
        self._choice: BackendChoice | None = None
        self._snapshot: np.ndarray | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_operation = threading.local()
        self._cancel = threading.Event()
        self._operation = 0
        self._volume_records: dict[str, Any] = {}  # search, propagation, checks: what the trace adds for a volume
        # Before each propagation of the session, in order: the slice strip and the records it replaced.
        self._before_propagations: list[tuple[list[dict], dict[str, Any]]] = []
        self._initial_area = 0  # the target's area on the key slice when the session opened

    # -- commands (UI thread) ----------------------------------------------------------------------

    def start(
        self,
        case: VolumeCase,
        instruction: str,
        target: SegmentPort,
        record: RecordPort,
        choice: BackendChoice,
        *,
        then: Literal["run", "step"] | None = "run",
        max_turns: int = 20,
        find: bool = False,
    ) -> None:
        """Start a session on ``case``'s key slice, then run the agent (or one step). The previous session is
        closed first: nothing of it can act on the new target, even if opening fails. What the target holds
        on the key slice is where the agent starts. With ``find`` the agent first searches ``case``'s axis for
        the slice that shows the target and works there (``Opened`` names it); if none does, the operation ends
        with ``Finished("terminate", answer)`` and no session."""
        if not instruction.strip():
            raise ValueError("Type what to segment, for example 'segment the liver tumor'.")
        self.check_start(max_turns)
        segment = target.read()
        if segment.shape != case.windowed.shape:
            raise ValueError(f"the segment is {segment.shape}, the volume {case.windowed.shape}")
        previous, self.session, self.case = self.session, None, None
        self.target, self.record = target, record
        self.state = DriverState()
        self._volume_records = {}
        self._before_propagations = []
        record.show_markers([])

        def job() -> None:
            nonlocal case
            _close(previous)
            if self._backend is None or choice != self._choice:
                self._backend, self._choice = None, None  # a build that fails leaves no stale backend behind
                self._backend, self._choice = self.build_backend(choice), choice
            if find:
                found = search_key_slice(
                    lambda slice_case: self._backend.open_session(slice_case, instruction, max_turns=1),
                    case, on_record=lambda record: self._emit(Searched(record.to_dict())), cancel=self._cancel,
                )  # fmt: skip
                self._volume_records["search"] = found.to_dict()
                if self._cancel.is_set():
                    self._emit(Finished("cancelled", None))
                    return
                if found.key is None:
                    self._emit(Finished("terminate", found.absent_answer()))
                    return
                case = case.at(found.key)
            on_slice = case.geometry.extract(segment)
            initial_mask = np.array(on_slice) if on_slice.any() else None
            self._initial_area = int(np.count_nonzero(on_slice))
            session = self._backend.open_session(
                case, instruction, initial_mask=initial_mask, max_turns=max_turns, on_step=self._on_step
            )
            self.case, self.session = case, session
            self._emit(Opened(case.geometry.axis, case.geometry.index))
            if then is not None:
                self._agent(session.run if then == "run" else session.step)

        building = self._backend is None or choice != self._choice
        activity = "Loading the models" if building else "Looking for the slice" if find else "The agent is working"
        self._launch(job, snapshot=segment, activity=activity)

    def check_start(self, max_turns: int) -> None:
        """What ``start`` refuses before it changes anything: a host checks it before its own preparations."""
        if max_turns < 1:
            raise ValueError(f"Max turns is {max_turns}: the agent needs at least 1 turn.")
        self._refuse_if_busy()

    def run(self) -> None:
        """Let the agent carry on from where the session is (Continue)."""
        self._launch(lambda: self._agent(self._session().run), self._read_target(), "The agent is working")

    def step(self) -> None:
        self._launch(lambda: self._agent(self._session().step), self._read_target(), "The agent is working")

    def click(self, ras: tuple[float, float, float], positive: bool) -> None:
        """A correction at a world RAS point, which must lie on the agent's slice (ValueError otherwise). It
        writes once, only when it succeeds, so there is nothing to put back and no snapshot to take."""
        column, row = self.ras_to_pixel(ras)
        self._launch(lambda: self._correct(column, row, positive), activity="Segmenting your click")

    def undo(self) -> None:
        def job() -> None:
            session = self._session()
            step = session.undo()
            self._emit(SliceChanged("undone", session.mask, step))
            self._emit_trace()

        self._launch(job, activity="Undoing")

    def propagate(self, options: PropagationOptions = DEFAULT_PROPAGATION, check_budget: int | None = None) -> None:
        """Grow the key-slice result through the volume as ``options`` say; with ``check_budget``, then check
        the propagated slices and let the agent repair at most that many (``Checked`` for each)."""
        span = options.span(self._geometry())

        def job() -> None:
            session = self._session()
            if not session.mask.any():
                raise ValueError("Segment the key slice first: there is nothing to propagate yet.")
            try:
                result = self._backend.propagate_and_check(
                    session, options, check_budget, cancel=self._cancel,
                    on_progress=lambda done, total, index: self._emit(Progressed(done, total)),
                    on_check=lambda record: self._emit(Checked(record)),
                )  # fmt: skip
            except PropagationCancelled:
                self._emit(Reverted("propagation cancelled"))
                return
            records = self._volume_records
            replaced = {name: records[name] for name in PROPAGATION_RECORDS if name in records}
            records.update(propagation=result.propagation_record(), checks=result.checks)
            self._emit(Propagated(result.mask, *span, result.slices, replaced))
            self._emit_trace()

        self._launch(job, snapshot=self._read_target(), activity="Propagating")

    def propagation_undone(self, first: int, last: int) -> None:
        """The host's undo history wrote back the slices the latest propagation of this session changed: the
        slice strip and the trace's propagation and checks are again the previous propagation's (none after the
        first), and the log says so."""
        self._refuse_if_busy()
        self.state.slices, replaced = self._before_propagations.pop() if self._before_propagations else ([], {})
        for name in PROPAGATION_RECORDS:
            self._volume_records.pop(name, None)
        self._volume_records.update(replaced)
        self.state.log.append(f"undone: propagation through slices {first}–{last}")
        if self.record is not None and self.session is not None:
            with contextlib.suppress(Exception):  # a server gone: the trace keeps its last stored version
                self.record.store_trace(self._trace().to_json())

    def cancel(self) -> None:
        """Stop what runs at the next token or slice; safe from any thread."""
        self._cancel.set()
        if self.session is not None:
            self.session.cancel()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what runs and end the session (frees it on a server at once); for a scene that closes. The
        cancelled operation gets ``timeout`` seconds to stop; whatever it reports later is dropped and nothing
        more is written to the old target."""
        self.cancel()
        if self._worker is not None:
            self._worker.join(timeout=timeout)
        self._operation += 1
        _close(self.session)
        self.session, self.case, self.target, self.record, self._snapshot = None, None, None, None, None
        self.state = DriverState()

    # -- state (UI thread) -------------------------------------------------------------------------

    @property
    def has_session(self) -> bool:
        return self.session is not None and self.target is not None

    @property
    def has_results(self) -> bool:
        """Whether the worker has results waiting for ``poll()`` (a host may prepare its views for them)."""
        return not self._events.empty()

    def poll(self, wait: float = 0.0) -> list[Event]:
        """Apply the events produced since the last call to the target, the record and ``state``; return them.

        With ``wait``, while an operation runs, keep collecting its events for up to that many seconds, or
        until it ends. A host whose main thread keeps Python's GIL while it sits in its own event loop (3D
        Slicer does) lends the worker thread that time: the worker runs Python only while the main thread
        waits here."""
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
            try:
                self._apply(event)
            except Exception as exc:  # a target that cannot take a result: say so, keep going
                failure = Failed(f"could not apply the result to the segment: {exc}", operation=event.operation)
                self._note(failure)
                events.append(failure)
            events.append(event)

    def wait(self, timeout: float = 600.0) -> list[Event]:
        """Block until the running operation ends, then ``poll()`` (for scripts and tests)."""
        if self._worker is not None:
            self._worker.join(timeout)
        return self.poll()

    def ras_to_pixel(self, ras: tuple[float, float, float]) -> tuple[int, int]:
        """(column, row) on the agent's slice of the voxel a world point falls in; ValueError off the slice."""
        geometry = self._geometry()
        ijk = geometry.ras_to_ijk(np.asarray(ras, dtype=float))
        if abs(ijk[geometry.normal_axis] - geometry.index) > 0.5:
            raise ValueError(
                f"The click is on {geometry.axis} slice {ijk[geometry.normal_axis]:.1f}, not on the agent's slice "
                f"{geometry.index}: go back to that slice to correct it."
            )
        column, row = (round(v) for v in geometry.ijk_to_pixel(ijk))  # the voxel whose centre is nearest
        if not (0 <= column < geometry.width and 0 <= row < geometry.height):
            raise ValueError("The click is outside the volume.")
        return column, row

    def trace_json(self) -> str:
        return self._trace().to_json()

    # -- internals ---------------------------------------------------------------------------------

    def _refuse_if_busy(self) -> None:
        if self.state.busy:
            raise DriverBusy("IBISAgent is still working: wait for it or press Cancel.")

    def _read_target(self) -> np.ndarray | None:
        return None if self.target is None else self.target.read()

    def _launch(self, job: Callable[[], Any], snapshot: np.ndarray | None = None, activity: str = "Working") -> None:
        """Run ``job`` on the worker; ``snapshot`` is the target as it was before, for a failure or cancel to
        restore (None: the job writes only on success, nothing to put back)."""
        self._refuse_if_busy()
        if self._worker is not None:
            self._worker.join()  # it has posted Idle already and is only returning
        self._snapshot = snapshot
        self.state.busy, self.state.progress, self.state.activity = True, None, activity
        self._cancel.clear()
        self._operation += 1
        operation = self._operation

        def guarded() -> None:
            self._worker_operation.value = operation
            try:
                job()
            except Exception as exc:  # every failure reaches the UI as an event, never as a silent thread death
                self._emit(Failed(str(exc) or exc.__class__.__name__))
                self._emit(Reverted("the operation failed"))
            finally:
                self._emit(Idle())

        self._worker = threading.Thread(target=guarded, name="ibisagent-workflow", daemon=True)
        self._worker.start()

    def _emit(self, event: Event) -> None:
        """Queue an event from the worker, marked with the operation that thread runs."""
        event.operation = getattr(self._worker_operation, "value", self._operation)
        self._events.put(event)
        if self.on_event is not None:
            self.on_event()

    def _emit_trace(self) -> None:
        with contextlib.suppress(Exception):  # a server gone mid-way: the operation's own error says so
            self._emit(TraceReady(self._trace().to_json()))

    def _trace(self) -> Any:  # -> Trace
        """The session's trace with what the volume agent did (search, propagation records, checks)."""
        trace = self._session().trace()
        for name, value in self._volume_records.items():
            setattr(trace, name, value)
        return trace

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
            self._emit(Reverted(f"the run ended: {reason}"))
        self._emit(Finished(reason, session.answer))
        self._emit_trace()

    def _correct(self, column: int, row: int, positive: bool) -> None:
        self._session().add_click(column, row, positive)
        self._emit_trace()

    def _on_step(self, step: Step) -> None:
        self._emit(SliceChanged("step", step.mask, step))

    def _apply(self, event: Event) -> None:
        state = self.state
        if isinstance(event, Idle):
            state.busy = False
        elif isinstance(event, Opened):
            state.activity = "The agent is working"
            state.log.append(f"working on {event.axis} slice {event.index}")
        elif isinstance(event, Searched):
            record = event.record
            area = f" (first mask {record['area']} px)" if record["verdict"] == "present" else ""
            state.log.append(f"looked at slice {record['index']}: {record['verdict']}{area}")
        elif isinstance(event, Checked):
            record = event.record
            state.log.append(f"checked slice {record['index']} ({', '.join(record['why'])}): {record['outcome']}, "
                             f"{record['area_before']} -> {record['area_after']} px")  # fmt: skip
        elif isinstance(event, SliceChanged):
            self._write_plane(event.plane)
            shown_before = state.markers
            self._show_markers()
            if event.step is not None:  # an undone click's marker is among those shown before
                state.log.append(self._describe(event.step, shown_before + state.markers, event.cause == "undone"))
        elif isinstance(event, Propagated):
            geometry = self._geometry()

            def replace(segment: np.ndarray) -> None:
                geometry.slab(segment, event.first, event.last)[...] = geometry.slab(
                    event.mask, event.first, event.last
                )

            self._write(replace)
            self._before_propagations.append((state.slices, event.replaced))
            state.slices = event.slices
            flagged = [s["index"] for s in event.slices if s["flags"]]
            state.log.append(f"propagated through slices {event.first}–{event.last}: {int(event.mask.sum())} voxels"
                             + (f"; flagged: {', '.join(map(str, flagged))}" if flagged else ""))  # fmt: skip
        elif isinstance(event, Progressed):
            state.progress = (event.done, event.total)
        elif isinstance(event, Finished):
            state.stop_reason, state.answer = event.reason, event.answer
            state.log.append(f"stopped: {event.reason}" + (f" — {event.answer}" if event.answer else ""))
        elif isinstance(event, Reverted):
            if self.target is not None and self._snapshot is not None:
                self.target.restore(self._snapshot)
            self._show_markers()
            state.log.append(f"put back as it was: {event.reason}")
        elif isinstance(event, Failed):
            self._note(event)
        elif isinstance(event, TraceReady) and self.record is not None:
            self.record.store_trace(event.text)

    def _describe(self, step: Step, markers: list[Marker], undone: bool) -> str:
        """A log line that names the step's marker as the views label it (``3+``), where a click landed (slice,
        voxel) and what it changed (the mask area on the agent's slice, before -> after)."""
        label = next((m.label for m in markers if m.turn == step.turn), None)
        if undone:
            return f"undone: step {step.turn}" + (f" (marker {label})" if label else "")
        who = "agent" if step.source == "agent" else "you"
        if step.action is None:
            return f"{step.turn}. {who}: {step.error or 'no action'}"
        if not step.action.is_click:
            text = f"{step.turn}. {who}: {step.action.kind}"
        else:
            text = f"{step.turn}. {who}: {step.action.kind} click" + (f" {label}" if label else "")
            if step.ijk is not None and self.case is not None:
                where = f"{self.case.geometry.axis} slice {self.case.geometry.index}"
                text += f" on {where}, voxel ({', '.join(map(str, step.ijk))})"
            text += f": {self._area_before(step)} -> {step.mask_area} px"
        if step.think:
            text += f" — {step.think}"
        return text

    def _area_before(self, step: Step) -> int:
        steps = self.session.steps if self.session is not None else []
        earlier = [s for s in steps if s.turn < step.turn]
        return earlier[-1].mask_area if earlier else self._initial_area

    def _note(self, failure: Failed) -> None:
        self.state.log.append(f"error: {failure.message}")

    def _write_plane(self, plane: np.ndarray) -> None:
        """The key slice of the target becomes ``plane``; written only when it differs."""
        if self.target is None:
            return
        geometry = self._geometry()
        if not np.array_equal(self.target.read_plane(geometry), plane):
            self.target.write_plane(geometry, plane)

    def _write(self, change: Callable[[np.ndarray], None]) -> None:
        """Apply ``change`` to the target segment as it is now; write only when something changed."""
        if self.target is None:
            return
        current = self.target.read()
        updated = np.array(current, dtype=bool)
        change(updated)
        if not np.array_equal(updated, current):
            self.target.write(updated)

    def _show_markers(self) -> None:
        self.state.markers = self._markers()
        if self.record is not None:
            self.record.show_markers(self.state.markers)

    def _markers(self) -> list[Marker]:
        return [] if self.session is None else markers_of(self.session.steps)

    def _session(self) -> Session:
        if self.session is None:
            raise RuntimeError("There is no session: start the agent first.")
        return self.session

    def _geometry(self) -> SliceGeometry:
        return self._case().geometry

    def _case(self) -> VolumeCase:
        if self.case is None:
            raise RuntimeError("There is no volume: start the agent first.")
        return self.case


def _close(session: Session | None) -> None:
    """Close a session (a remote one frees the server's memory at once)."""
    if session is not None:
        with contextlib.suppress(Exception):  # a session already gone on the server needs no closing
            session.close()
