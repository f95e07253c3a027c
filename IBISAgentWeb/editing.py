"""Editing by hand, and the page's one undo history.

The segment list (visibility, opacity, colour, name, delete) and the Paint, Erase, Scissors and Islands tools
are trame-slicer's Segment Editor on the app's segmentation. Its undo stack is the page's one history, in the
order things happened: the editor records each stroke, Islands apply, new, renamed, recoloured or deleted
segment itself (strokes and Islands kept small, ``labelmap_undo``); each of the session's steps (the agent's or a
correction click) and each propagation is recorded here, from the writes the driver makes through
``RecordedSegment``. Undo takes back the latest, whatever made it; an undone step of the open session goes
through the driver, so its markers, log and trace follow.

Each command puts back what its edit replaced; that is right only because every later change was undone first,
which is why every write the page makes to the segmentation is in this history, and why taking back an edit
older than the open session closes the session first (its start holds what the undo takes back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from trame_slicer.segmentation import (
    BrushDiameterMode,
    ScissorsEffectFillMode,
    SegmentationEffectErase,
    SegmentationEffectIslands,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
    SegmentationIslandsMode,
)
from trame_slicer.segmentation.segmentation_undo_command import SegmentationLabelMapUndoCommand
from undo_stack import UndoCommand, UndoStack

from IBISAgentLib.imaging.geometry import SliceGeometry
from IBISAgentLib.workflow import Event, Failed, Idle, Propagated, Reverted, SliceChanged, WorkflowDriver
from IBISAgentMRML import MRMLSegment

from .labelmap_undo import LabelmapEdit, PackedMask, compact

TOOLS = {
    "paint": SegmentationEffectPaint,
    "erase": SegmentationEffectErase,
    "scissors": SegmentationEffectScissors,
}
SCISSORS_MODES = {
    "erase_inside": ScissorsEffectFillMode.ERASE_INSIDE,
    "erase_outside": ScissorsEffectFillMode.ERASE_OUTSIDE,
    "fill_inside": ScissorsEffectFillMode.FILL_INSIDE,
    "fill_outside": ScissorsEffectFillMode.FILL_OUTSIDE,
}
# A command holds what its edit replaced, in the box it changed, at one bit per voxel.
UNDO_LIMIT = 30
DEFAULT_BRUSH_MM = 5.0


class RecordedSegment(MRMLSegment):
    """The driver's target port, noting each write as (what it replaced, what it wrote) for the history to
    take back. A restore (a cancelled or failed run putting the segment back) is not an edit and is not noted."""

    def __init__(self, *args: Any, on_write: Callable[[str, np.ndarray, np.ndarray], None]) -> None:
        super().__init__(*args)
        self.on_write = on_write

    def write_plane(self, geometry: SliceGeometry, plane: np.ndarray) -> None:
        before = self.read_plane(geometry)
        super().write_plane(geometry, plane)
        self.on_write("plane", before, plane)

    def write(self, mask: np.ndarray) -> None:
        before = self.read()
        super().write(mask)
        self.on_write("whole", before, mask)


class _Command(UndoCommand):
    """One of the session's edits; ``undo`` says how to take it back. There is no redo: the page offers none."""

    def __init__(self, text: str, undo: Callable[[], None]) -> None:
        super().__init__()
        self._text, self._undo = text, undo

    def undo(self) -> None:
        self._undo()

    def redo(self) -> None:
        raise NotImplementedError("the page offers no Redo")


class PageUndoStack(UndoStack):
    """The editor's undo stack, with its labelmap commands kept small and the latest command at hand."""

    def push(self, command: UndoCommand) -> None:
        if isinstance(command, SegmentationLabelMapUndoCommand):
            command = compact(command) or command
        super().push(command)

    def latest(self) -> UndoCommand | None:
        """The command Undo would take back."""
        return self._command_list[self.index() - 1] if self.can_undo() else None


class EditHistory:
    """The page's undo history and the Segment Editor it shares with the hand tools."""

    def __init__(self, editor: Any, driver: WorkflowDriver) -> None:
        self.editor, self.driver = editor, driver
        self.stack = PageUndoStack(undo_limit=UNDO_LIMIT)
        editor.set_undo_stack(self.stack)
        self._written: list[tuple[str, np.ndarray, np.ndarray]] = []  # the driver's writes: (kind, before, after)
        self._pending: list[_Command] = []  # the running operation's edits: recorded once it has ended
        self._undoing: tuple[_Command, Callable[[], None]] | None = None  # a step undone through the driver
        self._session_base: UndoCommand | None = None  # the latest command when the open session started
        self.on_written: Callable[[], None] = lambda: None  # after the driver wrote into the segment
        self.close_session: Callable[[], None] = driver.close  # the host's, which also clears its own state
        self.on_tools_off: Callable[[], None] = lambda: None  # the hand tools were turned off (a driver undo)

    # -- the driver's writes ---------------------------------------------------------------------------

    def port(self, segmentation_node: Any, segment_id: str, volume_node: Any, writer: Any) -> RecordedSegment:
        return RecordedSegment(
            segmentation_node, segment_id, volume_node, writer, on_write=lambda *w: self._written.append(w)
        )

    def session_started(self) -> None:
        """A session opened on what the segment holds now: edits older than this are not its to take back."""
        self._session_base = self.stack.latest()
        self.stack.set_clean()  # the stack merges no later edit into that command (a rename into a rename)

    def hand_edited(self) -> bool:
        """Whether the history holds a hand edit of voxels (a stroke, scissors, islands) since the open session
        started: the result is then the agent's and the clinician's (semi-automatic, in a DICOM SEG)."""
        done = self.stack._command_list[: self.stack.index()]
        start = done.index(self._session_base) + 1 if self._session_base in done else 0
        return any(isinstance(c, (SegmentationLabelMapUndoCommand, LabelmapEdit)) for c in done[start:])

    def session_closed(self) -> None:
        self._pending.clear()
        self._undoing = None
        self._written.clear()

    def record(self, events: list[Event]) -> None:
        """After the driver's results were applied: a command for each step and each propagation, with what its
        write replaced (the driver writes only what changes: a step that changed nothing replaced nothing; an
        undone step's write is part of its undo, not a new edit). They join the history when the operation
        ends; a cancelled or failed one put the segment back, and leaves none."""
        written, self._written = self._written, []
        if written:
            self.on_written()
        target, case = self.driver.target, self.driver.case

        def replaced(kind: str, after: np.ndarray) -> np.ndarray | None:
            if written and written[0][0] == kind and np.array_equal(written[0][2], after):
                return written.pop(0)[1]
            return None

        for event in events:
            if isinstance(event, SliceChanged):
                before = replaced("plane", event.plane)
                if event.cause == "step" and event.step is not None:
                    before = event.plane.copy() if before is None else before
                    self._pending.append(self._step(target, case.geometry, before, event.step.turn))
                elif event.cause == "undone" and self._undoing is not None:
                    self._undoing[1]()  # the slice as the step found it, hand edits included
                    self._undoing = None
            elif isinstance(event, Propagated):
                if written and written[0][0] == "whole":
                    before = written.pop(0)[1]
                    self._pending.append(self._propagation(target, case.geometry, before, event.first, event.last))
            elif isinstance(event, Failed) and self._undoing is not None:
                self.stack.push(self._undoing[0])  # the driver could not take the step back: it stays
                self._undoing = None
            elif isinstance(event, Reverted):
                self._pending.clear()
            elif isinstance(event, Idle):
                for command in self._pending:
                    self.stack.push(command)
                self._pending.clear()

    def _step(self, target: RecordedSegment, geometry: SliceGeometry, before: np.ndarray, turn: int) -> _Command:
        session = self.driver.session

        def put_back() -> None:
            if not np.array_equal(target.read_plane(geometry), before):
                MRMLSegment.write_plane(target, geometry, before)

        def undo() -> None:
            current = self.driver.session
            if current is session and current.steps and current.steps[-1].turn == turn:
                self.driver.undo()  # the session, its markers and its log follow; then the slice as it was
                self._undoing = (command, put_back)
                self.editor.deactivate_effect()  # no stroke lands before the driver's write
                self.on_tools_off()
            else:  # a step of a session that has ended
                put_back()

        command = _Command(f"step {turn}", undo)
        return command

    def _propagation(
        self, target: RecordedSegment, geometry: SliceGeometry, before: np.ndarray, first: int, last: int
    ) -> _Command:
        slab = PackedMask.of(geometry.slab(before, first, last))  # only the propagated slices changed
        session = self.driver.session

        def undo() -> None:
            segment = target.read()
            geometry.slab(segment, first, last)[...] = slab.unpack()
            MRMLSegment.write(target, segment)
            if self.driver.session is session:
                self.driver.propagation_undone(first, last)

        return _Command(f"propagation through slices {first}–{last}", undo)

    # -- the page's commands ---------------------------------------------------------------------------

    def undo(self) -> None:
        """Take back the latest edit, whatever made it; ValueError when there is none (or the agent works)."""
        self._refuse_if_busy()
        if not self.stack.can_undo():
            raise ValueError("There is nothing to undo.")
        if self.driver.has_session and self.stack.latest() is self._session_base:
            self.close_session()  # the edit is older than the session, which started from it
        self.stack.undo()

    def _refuse_if_busy(self) -> None:
        if self.driver.state.busy:
            raise ValueError("Wait for the agent or press Cancel before undoing.")

    def forget(self) -> None:
        """A new volume: nothing of the old one can be undone onto it."""
        self.editor.deactivate_effect()
        self.stack.clear()
        self.session_closed()
        self._session_base = None

    def set_tool(self, name: str | None, segment_id: str, brush_mm: float, scissors: str) -> None:
        """Paint, Erase, Scissors or Islands on ``segment_id`` (None: no tool)."""
        if name is None:
            self.editor.deactivate_effect()
            return
        if name not in TOOLS:
            raise ValueError(f"There is no tool '{name}'.")
        if scissors not in SCISSORS_MODES:
            raise ValueError(f"Scissors cannot '{scissors}': erase or fill, inside or outside.")
        if self.driver.state.busy:
            raise ValueError("Wait for the agent or press Cancel before editing by hand.")
        self._select(segment_id)
        effect = self.editor.set_active_effect_type(TOOLS[name])
        if name in ("paint", "erase"):
            effect.set_brush_diameter(float(brush_mm), BrushDiameterMode.Absolute)
        elif name == "scissors":
            effect.set_fill_mode(SCISSORS_MODES[scissors])

    def islands(self, segment_id: str, keep_largest: bool, minimum_size: int) -> None:
        """Islands on ``segment_id``: keep the largest part, or remove parts under ``minimum_size`` voxels; one
        command. The tool in use stays."""
        self._refuse_if_busy()
        self._select(segment_id)
        in_use = self.editor.active_effect
        try:
            effect = self.editor.set_active_effect_type(SegmentationEffectIslands)  # it acts only while active
            effect.set_minimum_island_size(int(minimum_size))
            modes = SegmentationIslandsMode
            effect.apply(modes.KEEP_LARGEST_ISLAND if keep_largest else modes.REMOVE_SMALL_ISLANDS)
        finally:
            self.editor.set_active_effect(in_use)

    def _select(self, segment_id: str) -> None:
        if self.editor.active_segmentation is None or segment_id not in self.editor.get_segment_ids():
            raise ValueError("Pick or add a target segment before editing by hand.")
        self.editor.set_active_segment_id(segment_id)
