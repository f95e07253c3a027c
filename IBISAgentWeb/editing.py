"""Editing by hand, and the page's one undo history.

The segment list (visibility, opacity, colour, name, delete) and the Paint, Erase, Scissors and Islands tools
are trame-slicer's Segment Editor on the app's segmentation. Its undo stack is the page's one history, in the
order things happened: the editor records each stroke, Islands apply, new, renamed, recoloured or deleted
segment itself; each of the session's steps (the agent's or a correction click) and each propagation is recorded
here, from the writes the driver makes through ``RecordedSegment``. Undo takes back the latest, whatever made it;
an undone step of the open session goes through the driver, so its markers, log and trace follow.

The editor's commands put back a copy of the whole segmentation; that is right only because every later change
was undone first, which is why every write the page makes to the segmentation is in this history.
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
from undo_stack import UndoCommand, UndoStack

from IBISAgentLib.imaging.geometry import SliceGeometry
from IBISAgentLib.workflow import Event, Idle, Propagated, Reverted, SliceChanged, WorkflowDriver
from IBISAgentMRML import MRMLSegment

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
# Each of the editor's commands holds two copies of the segmentation: the limit bounds the memory it takes.
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


class EditHistory:
    """The page's undo history and the Segment Editor it shares with the hand tools."""

    def __init__(self, editor: Any, driver: WorkflowDriver) -> None:
        self.editor, self.driver = editor, driver
        self.stack = UndoStack(undo_limit=UNDO_LIMIT)
        editor.set_undo_stack(self.stack)
        self._written: list[tuple[str, np.ndarray, np.ndarray]] = []  # the driver's writes: (kind, before, after)
        self._pending: list[_Command] = []  # the running operation's edits: recorded once it has ended
        self.on_written: Callable[[], None] = lambda: None  # after the driver wrote into the segment

    # -- the driver's writes ---------------------------------------------------------------------------

    def port(self, segmentation_node: Any, segment_id: str, volume_node: Any, writer: Any) -> RecordedSegment:
        return RecordedSegment(
            segmentation_node, segment_id, volume_node, writer, on_write=lambda *w: self._written.append(w)
        )

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
            elif isinstance(event, Propagated):
                if written and written[0][0] == "whole":
                    before = written.pop(0)[1]
                    self._pending.append(self._propagation(target, case.geometry, before, event.first, event.last))
            elif isinstance(event, Reverted):
                self._pending.clear()
            elif isinstance(event, Idle):
                for command in self._pending:
                    self.stack.push(command)
                self._pending.clear()

    def _step(self, target: RecordedSegment, geometry: SliceGeometry, before: np.ndarray, turn: int) -> _Command:
        session = self.driver.session

        def undo() -> None:
            current = self.driver.session
            if current is session and current.steps and current.steps[-1].turn == turn:
                self.driver.undo()  # the session, its markers and its log follow; it writes ``before`` back
            else:  # a step of an earlier session: its slice as it was
                MRMLSegment.write_plane(target, geometry, before)

        return _Command(f"step {turn}", undo)

    def _propagation(
        self, target: RecordedSegment, geometry: SliceGeometry, before: np.ndarray, first: int, last: int
    ) -> _Command:
        slab = geometry.slab(before, first, last).copy()  # only the propagated slices changed

        def undo() -> None:
            self._refuse_if_busy()
            segment = target.read()
            geometry.slab(segment, first, last)[...] = slab
            MRMLSegment.write(target, segment)

        return _Command(f"propagation through slices {first}–{last}", undo)

    # -- the page's commands ---------------------------------------------------------------------------

    def undo(self) -> None:
        """Take back the latest edit, whatever made it; ValueError when there is none (or the agent works)."""
        self._refuse_if_busy()
        if not self.stack.can_undo():
            raise ValueError("There is nothing to undo.")
        self.stack.undo()

    def _refuse_if_busy(self) -> None:
        if self.driver.state.busy:
            raise ValueError("Wait for the agent or press Cancel before undoing.")

    def forget(self) -> None:
        """A new volume: nothing of the old one can be undone onto it."""
        self.editor.deactivate_effect()
        self.stack.clear()
        self._written.clear()
        self._pending.clear()

    def set_tool(self, name: str | None, segment_id: str, brush_mm: float, scissors: str) -> None:
        """Paint, Erase, Scissors or Islands on ``segment_id`` (None: no tool)."""
        if name is None:
            self.editor.deactivate_effect()
            return
        if name not in TOOLS:
            raise ValueError(f"There is no tool '{name}'.")
        if self.editor.active_segmentation is None or segment_id not in self.editor.get_segment_ids():
            raise ValueError("Pick or add a target segment before editing by hand.")
        self.editor.set_active_segment_id(segment_id)
        effect = self.editor.set_active_effect_type(TOOLS[name])
        if name in ("paint", "erase"):
            effect.set_brush_diameter(float(brush_mm), BrushDiameterMode.Absolute)
        elif name == "scissors":
            effect.set_fill_mode(SCISSORS_MODES[scissors])

    def islands(self, keep_largest: bool, minimum_size: int) -> None:
        """Islands on the active segment: keep the largest part, or remove parts under ``minimum_size`` voxels;
        one command. The tool in use stays."""
        self._refuse_if_busy()
        if self.editor.active_segmentation is None or not self.editor.active_segment_id:
            raise ValueError("Pick or add a target segment before editing by hand.")
        in_use = self.editor.active_effect
        effect = self.editor.set_active_effect_type(SegmentationEffectIslands)  # it acts only while active
        effect.set_minimum_island_size(int(minimum_size))
        modes = SegmentationIslandsMode
        effect.apply(modes.KEEP_LARGEST_ISLAND if keep_largest else modes.REMOVE_SMALL_ISLANDS)
        self.editor.set_active_effect(in_use)
