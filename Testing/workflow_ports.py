"""The driver's ports over plain arrays: a front end's segment and record without a scene (the MRML ones
are tested on Slicer's core in test_mrml_*.py)."""

from __future__ import annotations

import numpy as np


class ArrayTarget:
    def __init__(self, shape: tuple[int, int, int], segment: np.ndarray | None = None) -> None:
        self.segment = np.zeros(shape, bool) if segment is None else segment.astype(bool)
        self.writes = 0
        self.restores = 0
        self.markers: list = []
        self.traces: list[str] = []

    def read(self) -> np.ndarray:
        return self.segment.copy()

    def write(self, mask: np.ndarray) -> None:
        self.segment = mask.astype(bool)
        self.writes += 1

    def restore(self, mask: np.ndarray) -> None:
        self.segment = mask.astype(bool)
        self.restores += 1

    def show_markers(self, markers: list) -> None:
        self.markers = list(markers)

    def store_trace(self, text: str) -> None:
        self.traces.append(text)
