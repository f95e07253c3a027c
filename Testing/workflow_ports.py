"""For the workflow tests: the driver's ports over plain arrays (a front end's segment and record without a
scene; the MRML ones are tested on Slicer's core in test_mrml_*.py), and policies that hold a run open
until the test lets it go."""

from __future__ import annotations

import threading

import numpy as np

from IBISAgentLib.workflow import BackendChoice

# A replayed agent run: a click, a correction, then Terminate.
OUTPUTS = [
    "<think>white matter here</think><action>Positive Point (0.5000, 0.5000)</action>",
    "<think>too much</think><action>Negative Point (0.2000, 0.3000)</action>",
    "<think>good</think><action>Terminate</action><answer>Done.</answer>",
]
LOCAL = BackendChoice()  # the choice the tests hand the driver (their backend builder ignores it)


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

    def read_plane(self, geometry) -> np.ndarray:
        return geometry.extract(self.segment).copy()

    def write_plane(self, geometry, plane: np.ndarray) -> None:
        geometry.insert(self.segment, plane)
        self.writes += 1

    def restore(self, mask: np.ndarray) -> None:
        self.segment = mask.astype(bool)
        self.restores += 1

    def show_markers(self, markers: list) -> None:
        self.markers = list(markers)

    def store_trace(self, text: str) -> None:
        self.traces.append(text)


def clicks_then_waits(click: str, later: str) -> tuple[type, threading.Event]:
    """A policy class that answers ``click``, then sets the event and waits for the cancel before ``later``."""
    reached = threading.Event()

    class ClicksThenWaits:
        description = "test policy: one click, then waits until cancelled"

        def __init__(self) -> None:
            self.calls = 0

        def generate(self, request, cancel):
            self.calls += 1
            if self.calls == 1:
                return click
            reached.set()
            cancel.wait(30)
            return later

    return ClicksThenWaits, reached


def waits_for_release(answer: str) -> tuple[type, threading.Event]:
    """A policy class that answers only once the returned event is set."""
    release = threading.Event()

    class WaitsForRelease:
        description = "test policy: answers once released"

        def generate(self, request, cancel):
            release.wait(30)
            return answer

    return WaitsForRelease, release
