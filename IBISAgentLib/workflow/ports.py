"""What a front end gives the driver: its target segment and its record (markers, trace) in its own scene.

Masks are (k, j, i) bool arrays on the volume's voxel grid, as the driver's VolumeCase holds it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..imaging.geometry import SliceGeometry
from .markers import Marker


class SegmentPort(Protocol):
    """The segment that receives the results, fixed when a session starts."""

    def read(self) -> np.ndarray:
        """The segment as it is now, (k, j, i) bool on the volume's grid."""
        ...

    def write(self, mask: np.ndarray) -> None:
        """The segment becomes ``mask`` as one undoable edit; the front end's masking settings (editable
        area, intensity range) apply, and no other segment changes."""
        ...

    def read_plane(self, geometry: SliceGeometry) -> np.ndarray:
        """The segment on one slice, (rows, columns) bool as ``geometry.extract`` shows it."""
        ...

    def write_plane(self, geometry: SliceGeometry, plane: np.ndarray) -> None:
        """That slice becomes ``plane`` as one undoable edit (masking applies as for ``write``); nothing else
        changes. An agent step or a correction changes one slice: this is what keeps a click fast."""
        ...

    def restore(self, mask: np.ndarray) -> None:
        """Put the segment back exactly as ``mask`` (after a failed or cancelled operation), masking bypassed."""
        ...


class RecordPort(Protocol):
    """Where the session's clicks and trace are shown and kept."""

    def show_markers(self, markers: list[Marker]) -> None: ...

    def store_trace(self, text: str) -> None:
        """The session's trace JSON, kept with the scene."""
        ...
