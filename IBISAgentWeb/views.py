"""What the viewer shows of itself: each slice view's caption (its name, orientation and the slice it is on, in
the agent's numbering: the voxel index along the view's axis, as in the Propagate range, the log and the CLI's
``--slice``), the patient directions at its edges, the window/level with its presets, and the layouts."""

from __future__ import annotations

from typing import Any

import slicer
from trame.widgets import html
from trame_slicer.core import LayoutManager
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from vtkmodules.vtkCommonCore import vtkCommand

from IBISAgentLib.imaging.geometry import ras_direction_letter
from IBISAgentLib.imaging.windowing import CT_PRESETS, choose_window
from IBISAgentMRML import AdapterError, view_slice

# The layout choices: their trame-slicer names (its default grid, plus one big coronal or sagittal view).
LAYOUTS = {"Axial Primary": "Axial large", "Quad View": "2 x 2", "Axial Only": "Axial only",
           "Coronal Only": "Coronal only", "Sagittal Only": "Sagittal only"}  # fmt: skip
DEFAULT_LAYOUT = "Axial Primary"
# "auto" is the CLI's --window default: the abdomen preset on CT, the 0.5-99.5 percentile range otherwise.
WINDOWS = ["auto", *CT_PRESETS]


def layouts() -> dict[str, Layout]:
    grid = LayoutManager.default_grid_configuration()
    grid["Coronal Only"] = Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.coronal_view()])
    grid["Sagittal Only"] = Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.sagittal_view()])
    return {name: grid[name] for name in LAYOUTS}


def caption_key(tag: str) -> str:
    return f"ia_caption_{tag}"


def view_caption(volume_node: Any, slice_node: Any, name: str) -> dict[str, str]:
    """{"text", "left", "right", "top", "bottom"} for a slice view: 'Red · axial · slice 57 of 0–119' and the
    patient direction each edge of the view faces."""
    slice_to_ras = slicer.util.arrayFromVTKMatrix(slice_node.GetSliceToRAS())
    right, up = slice_to_ras[:3, 0], slice_to_ras[:3, 1]
    letters = {
        "left": ras_direction_letter(-right),
        "right": ras_direction_letter(right),
        "top": ras_direction_letter(up),
        "bottom": ras_direction_letter(-up),
    }
    orientation = (slice_node.GetOrientation() or "reformat").lower()
    text = f"{name} · {orientation}"
    if volume_node is not None and volume_node.GetImageData() is not None:
        try:
            shown = view_slice(volume_node, slice_node)
        except AdapterError:
            text += " · not on a voxel slice of the volume"
        else:
            text = f"{name} · {shown.axis} · slice {shown.index} of 0–{shown.count - 1}"
            if not shown.voxel_plane:
                text += f" (resampled, {shown.tilt_degrees:.0f}° off)"
    return {"text": text, **letters}


class ViewCaptions:
    """Keeps each slice view's caption in the state (``ia_caption_<tag>``) as its slice or the volume changes."""

    def __init__(self, state: Any, views: list[Any], volume: Any) -> None:
        self.state, self.views, self.volume = state, views, volume
        for view in views:
            view.modified.connect(lambda _view, v=view: self.update(v))
            self.update(view)

    def set_volume(self, volume: Any) -> None:
        self.volume = volume
        for view in self.views:
            self.update(view)

    def update(self, view: Any) -> None:
        tag = view.get_singleton_tag()
        caption = view_caption(self.volume, view.get_view_node(), tag)
        if self.state[caption_key(tag)] != caption:
            self.state[caption_key(tag)] = caption
            self.state.flush()


class WindowControl:
    """The Window control: a preset sets the volume's display window/level (and so what the agent sees); a
    drag in a view, or anything else that changes the display, shows as 'custom' with its level and width."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.volume: Any = None
        self._observed: tuple[Any, int] | None = None
        self._applied: tuple[float, float] | None = None  # the (level, width) the chosen preset set
        state.ia_window = "auto"
        state.ia_window_text = ""
        state.change("ia_window")(self._on_choice)

    def set_volume(self, volume: Any) -> None:
        if self._observed is not None:
            self._observed[0].RemoveObserver(self._observed[1])
            self._observed = None
        self.volume = volume
        if volume is None:
            return
        display = volume.GetDisplayNode()
        if display is None:
            volume.CreateDefaultDisplayNodes()
            display = volume.GetDisplayNode()
        self._observed = (display, display.AddObserver(vtkCommand.ModifiedEvent, lambda *_: self._show()))
        with self.state:
            self.state.ia_window = "auto"
        self.apply("auto")

    def apply(self, name: str) -> None:
        if self.volume is None or name not in WINDOWS:
            return
        request = None if name == "auto" else name
        window = choose_window(slicer.util.arrayFromVolume(self.volume), request)
        display = self.volume.GetDisplayNode()
        self._applied = (window.level, window.width)
        modifying = display.StartModify()  # one change, not an intermediate one that reads as a drag
        display.SetAutoWindowLevel(0)
        display.SetWindowLevel(window.width, window.level)
        display.EndModify(modifying)
        self._show()

    def _on_choice(self, ia_window: str, **_: Any) -> None:
        if ia_window != "custom":
            self.apply(ia_window)

    def _show(self) -> None:
        display = self.volume.GetDisplayNode() if self.volume is not None else None
        if display is None:
            return
        level, width = display.GetLevel(), display.GetWindow()
        with self.state:
            self.state.ia_window_text = f"level {level:g}, width {width:g}"
            if self.state.ia_window != "custom" and self._applied != (level, width):
                self.state.ia_window = "custom"


def window_items() -> list[dict[str, str]]:
    return [{"title": name.capitalize(), "value": name} for name in WINDOWS] + [
        {"title": "Custom (dragged)", "value": "custom"}
    ]


_OVERLAY = (
    "position: absolute; pointer-events: none; color: #ffd54f; font: 600 13px sans-serif; text-shadow: 0 0 3px #000;"
)
_EDGES = {"left": "left: 8px; top: 50%;", "right": "right: 10px; top: 50%;", "top": "top: 24px; left: 50%;",
          "bottom": "bottom: 44px; left: 50%;"}  # fmt: skip


def caption_overlay(view: Any) -> None:
    """The caption (top right) and the edge letters over a slice view; clicks pass through them."""
    tag = view.get_singleton_tag()
    key = caption_key(tag)
    html.Div(f"{{{{ {key}.text }}}}", classes=f"ia-caption ia-caption-{tag}", style=_OVERLAY + "top: 4px; right: 10px;")
    for edge, where in _EDGES.items():
        html.Div(f"{{{{ {key}.{edge} }}}}", classes=f"ia-edge ia-edge-{edge}", style=_OVERLAY + where)
