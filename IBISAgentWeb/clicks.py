"""Correction clicks: a left click on a slice view, while Add point or Remove point is on, becomes the world RAS
point under the cursor (the view's own XY-to-RAS, as IBISAgentMRML.xy_to_world reads it) for the bridge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vtkmodules.vtkCommonCore import vtkCommand

from IBISAgentMRML import xy_to_world

# Above the slice view's own interactor style, so the click is seen first.
PRIORITY = 10.0


class CorrectionClicks:
    def __init__(
        self,
        views: list[Any],
        on_click: Callable[[str, tuple[float, float, float]], None],
        is_active: Callable[[], bool],
    ) -> None:
        self.on_click, self.is_active = on_click, is_active
        for view in views:
            view.interactor().AddObserver(
                vtkCommand.LeftButtonPressEvent, lambda obj, _event, v=view: self._pressed(v, obj), PRIORITY
            )

    def _pressed(self, view: Any, interactor: Any) -> None:
        if not self.is_active():
            return
        x, y = interactor.GetEventPosition()
        ras = xy_to_world(view.get_view_node(), x, y)
        self.on_click(view.get_singleton_tag(), tuple(float(v) for v in ras))
