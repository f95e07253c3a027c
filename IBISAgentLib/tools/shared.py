"""One click tool for sessions on several threads (``ibisagent eval --workers``).

A tool holds one current image, and a session sets its image and then predicts in two calls, so sessions
on other threads could swap the image in between. Here every call runs under one lock, and a prediction
first sets the calling thread's own image again: a cache hit for the SAM 2 tool's embedding cache, so
each session sees exactly what it would see alone.
"""

from __future__ import annotations

import threading

import numpy as np

from ..agent.interfaces import Click, SegmentationTool, ToolResult


class SharedTool:
    def __init__(self, tool: SegmentationTool) -> None:
        self.tool = tool
        self.description = tool.description
        self.spec = tool.spec
        self._lock = threading.Lock()
        self._current = threading.local()

    def identity(self) -> dict[str, str]:
        return self.tool.identity()

    def set_image(self, image: np.ndarray, key: str | None = None) -> None:
        self._current.image = (image, key)
        with self._lock:
            self.tool.set_image(image, key)

    def predict(self, clicks: list[Click], previous_logits: np.ndarray | None) -> ToolResult:
        current = getattr(self._current, "image", None)
        if current is None:
            raise RuntimeError("set_image() must be called on this thread before predict()")
        image, key = current
        with self._lock:
            self.tool.set_image(image, key)
            return self.tool.predict(clicks, previous_logits)

    def mask_to_logits(self, mask: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.tool.mask_to_logits(mask)

    def release(self, key: str) -> None:
        with self._lock:
            self.tool.release(key)
