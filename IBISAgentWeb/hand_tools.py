"""The page's segment list and hand tools: what the panel shows of the segmentation's segments, and its events
forwarded to trame-slicer's Segment Editor (through ``EditHistory`` where the change is an edit to undo).

Visibility and opacity are display settings, as in Slicer: not edits, not in the undo history. A new, renamed,
recoloured or deleted segment is an edit."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from trame_slicer.utils import hex_to_rgb_float, rgb_float_to_hex

from IBISAgentMRML import whole_number
from IBISAgentMRML.segments import segment_voxels

from .bridge import DriverBridge
from .editing import DEFAULT_BRUSH_MM, TOOLS

MAX_BRUSH_MM = 200.0  # wider than any organ a stroke would paint in one go
MAX_NAME = 120
MAX_ISLAND = 100_000_000  # voxels; more than any volume the page opens holds
COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
# After the agent's view (at once), the panel, the other views (scene.OTHER_VIEWS_AFTER_S, THREE_D_AFTER_S), and once
# for a burst of edits: counting a segment's voxels reads its whole labelmap (tens of ms at 512 x 512 x 300).
REFRESH_AFTER_S = 0.6
DEFAULTS = {
    "ia_tool": None,  # "paint", "erase", "scissors" or None
    "ia_brush_mm": DEFAULT_BRUSH_MM,
    "ia_scissors": "erase_inside",
    "ia_island_min": 100,
    "ia_segment_rows": [],  # {value, name, color, visible, opacity} for each segment of the app's segmentation
    "ia_segment_voxels": "",  # the target segment's size, after every edit
    "ia_can_undo": False,
}


class HandTools:
    def __init__(self, state: Any, bridge: DriverBridge) -> None:
        self.state, self.bridge = state, bridge
        self.editor = bridge.history.editor
        self._refresh_due: asyncio.TimerHandle | None = None
        state.update(DEFAULTS)
        for name in ("ia_tool", "ia_brush_mm", "ia_scissors"):
            state.change(name)(self._on_tool_settings)
        state.change("ia_segment")(self._on_segment)
        state.change("ia_mode")(self._on_correction_mode)
        state.change("ia_busy")(self._on_busy)
        bridge.history.stack.index_changed.connect(self._on_history)
        bridge.history.on_written = self.refresh_soon
        bridge.history.on_tools_off = self.tools_off

    # -- tools ---------------------------------------------------------------------------------------

    def _on_tool_settings(self, **_: Any) -> None:
        tool = self.state.ia_tool
        if tool and self.state.ia_mode:
            self.state.ia_mode = None  # a left click is a stroke now, not a correction
        try:
            brush = _brush_mm(self.state.ia_brush_mm) if tool in ("paint", "erase") else DEFAULT_BRUSH_MM
            self.bridge.history.set_tool(tool if tool in TOOLS else None, self._target(), brush, self.state.ia_scissors)
        except (TypeError, ValueError) as exc:
            self.state.ia_tool = None
            self.bridge.history.set_tool(None, "", DEFAULT_BRUSH_MM, "erase_inside")
            self.bridge.notify(str(exc))

    def _on_segment(self, **_: Any) -> None:
        """A new target: the tool in use moves to it (or goes, with no target)."""
        if self.state.ia_tool:
            self._on_tool_settings()
        self.refresh()

    def tools_off(self) -> None:
        with self.state:
            self.state.ia_tool = None

    def _on_correction_mode(self, ia_mode: str | None, **_: Any) -> None:
        if ia_mode and self.state.ia_tool:
            self.state.ia_tool = None

    def _on_busy(self, ia_busy: bool, **_: Any) -> None:
        """No hand edits while the agent writes: a run that is cancelled puts the segment back as it was."""
        if ia_busy and self.state.ia_tool:
            self.state.ia_tool = None

    def on_keep_largest(self) -> None:
        self.bridge.command(lambda: self.bridge.history.islands(self._target(), True, 0))

    def on_remove_small(self) -> None:
        self.bridge.command(
            lambda: self.bridge.history.islands(self._target(), False, _count(self.state.ia_island_min))
        )

    def _target(self) -> str:
        """The Target segment's id (the tools edit it, whichever segment the editor had)."""
        resolved = self.bridge.scene.resolve_segment(self.state.ia_segment)
        return resolved[1] if resolved else ""

    # -- the segment list ----------------------------------------------------------------------------

    def on_visible(self, value: str) -> None:
        self.bridge.command(lambda: self._toggle_visible(value))

    def on_opacity(self, value: str, opacity: Any) -> None:
        self.bridge.command(lambda: self._set_opacity(value, _opacity(opacity)))

    def on_color(self, value: str, color: Any) -> None:
        self.bridge.command(lambda: self._set_properties(value, color=hex_to_rgb_float(_colour(color))))

    def on_rename(self, value: str, name: str) -> None:
        self.bridge.command(lambda: self._rename(value, name))

    def on_delete(self, value: str) -> None:
        self.bridge.command(lambda: self._delete(value))

    def _toggle_visible(self, value: str) -> None:
        node, segment_id = self._segment(value)
        display = node.GetDisplayNode()
        display.SetSegmentVisibility(segment_id, not display.GetSegmentVisibility(segment_id))
        self.refresh()

    def _set_opacity(self, value: str, opacity: float) -> None:
        node, segment_id = self._segment(value)
        node.GetDisplayNode().SetSegmentOpacity(segment_id, opacity)
        self.refresh()

    def _rename(self, value: str, name: Any) -> None:
        try:
            name = _name(name)
        except ValueError:
            self.refresh()  # the field shows the name it had
            raise
        self._set_properties(value, name=name)

    def _delete(self, value: str) -> None:
        """Deleting the session's segment ends the session (its steps had nowhere left to go); Undo brings the
        segment back."""
        node, segment_id = self._segment(value)
        driver = self.bridge.driver
        if driver.state.busy:
            raise ValueError("Wait for the agent or press Cancel before deleting a segment.")
        if driver.target is not None and (driver.target.segmentation_node, driver.target.segment_id) == (
            node,
            segment_id,
        ):
            self.bridge.close()
        self.editor.remove_segment(segment_id)
        if self.state.ia_segment == value:
            self.state.ia_segment = ""
            self.tools_off()
        self.bridge.refresh_segments()
        self.refresh()

    def _set_properties(self, value: str, **changes: Any) -> None:
        _, segment_id = self._segment(value)
        properties = self.editor.get_segment_properties(segment_id)
        for key, changed in changes.items():
            setattr(properties, key, changed)
        self.editor.set_segment_properties(segment_id, properties)
        self.bridge.refresh_segments()
        self.refresh()

    def _segment(self, value: str) -> tuple[Any, str]:
        resolved = self.bridge.scene.resolve_segment(value)
        if resolved is None or resolved[0] is not self.editor.active_segmentation_node:
            raise ValueError(f"There is no segment '{value}' any more.")
        return resolved

    def _on_history(self, _index: int) -> None:
        self.bridge.after_undoable_change()
        self.refresh_soon()

    def refresh_soon(self) -> None:
        """Refresh once, after the views and the panel: counting the target's voxels must not hold up the frames
        of an edit, nor run once per command at a run's end."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not from the event loop (start-up): now
            self.refresh()
            return
        if self._refresh_due is None:
            self._refresh_due = loop.call_later(REFRESH_AFTER_S, self._refresh_now)

    def _refresh_now(self) -> None:
        self._refresh_due = None
        self.refresh()

    def refresh(self) -> None:
        """The rows of the segment list and the target's size, as the segmentation is now."""
        node = self.editor.active_segmentation_node
        rows = []
        if node is not None and node.GetScene() is not None:
            display = node.GetDisplayNode()
            for segment_id in self.editor.get_segment_ids():
                segment = node.GetSegmentation().GetSegment(segment_id)
                rows.append(
                    {
                        "value": f"{node.GetID()}|{segment_id}",
                        "name": segment.GetName(),
                        "color": rgb_float_to_hex(list(segment.GetColor())),
                        "visible": bool(display.GetSegmentVisibility(segment_id)),
                        "opacity": round(display.GetSegmentOpacity2DFill(segment_id), 2),
                    }
                )
        resolved = self.bridge.scene.resolve_segment(self.state.ia_segment)
        voxels = ""
        if resolved is not None and resolved[0] is node:
            voxels = f"{segment_voxels(node, resolved[1]):,} voxels"
        with self.state:
            self.state.ia_segment_rows = rows
            self.state.ia_segment_voxels = voxels
            self.state.ia_can_undo = self.bridge.history.stack.can_undo()


def _count(value: Any) -> int:
    """The smallest part Remove small parts keeps: a whole number of voxels, 1 to MAX_ISLAND."""
    count = whole_number(value, "the smallest part to keep, in voxels")
    if not 1 <= count <= MAX_ISLAND:
        raise ValueError(f"The smallest part to keep is {value} voxels: give 1 to {MAX_ISLAND:,}.")
    return count


def _brush_mm(value: Any) -> float:
    """The brush's width: a number of millimetres, over 0 and at most MAX_BRUSH_MM."""
    brush = _number(value, "a brush width in millimetres")
    if not 0 < brush <= MAX_BRUSH_MM:
        raise ValueError(f"The brush is {value} mm wide: give a width over 0 and up to {MAX_BRUSH_MM:g} mm.")
    return brush


def _opacity(value: Any) -> float:
    opacity = _number(value, "an opacity (0 to 1)")
    if not 0.0 <= opacity <= 1.0:  # NaN fails too
        raise ValueError(f"The opacity is {value}: give a number from 0 to 1.")
    return opacity


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"'{value}' is not {what}.") from None


def _colour(value: Any) -> str:
    if not isinstance(value, str) or not COLOUR.fullmatch(value):
        raise ValueError(f"'{value}' is not a colour (#rrggbb).")
    return value


def _name(value: Any) -> str:
    """A segment's name: some text, one line, at most MAX_NAME characters."""
    name = str(value).strip()
    if not name:
        raise ValueError("A segment needs a name.")
    if len(name) > MAX_NAME or any(not c.isprintable() for c in name):
        raise ValueError(f"A segment's name is one line of at most {MAX_NAME} characters.")
    return name
