"""The weight-free segmenter (``--segmenter classical``): scikit-image's random walker, seeded by the clicks
on a slice and, through a volume, by the previous slice's mask.

The click tool works on a window around the clicks (and the previous mask), downsampled to a bounded size,
so a click on a 512 x 512 slice is answered in well under half a second on two CPU cores. The propagator
seeds each next slice with the previous slice's mask, eroded (the target) and everything beyond it, dilated
(the background), and lets the walker place the boundary. Clinicians without a GPU still get click
corrections and a 3D result, and the oracle, the search, the check and evaluation run end to end without
weights.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy import ndimage

from ..agent.interfaces import Click, ToolResult
from ..imaging.geometry import SliceGeometry
from .propagation import DEFAULT_PROPAGATION, PropagationOptions, PropagationResult, check_keys, run_passes


class ClassicalSegmenter:
    """The weight-free segmenter as the registry names it: a click tool and a propagator, no checkpoint."""

    name = "classical"

    def tool(self, device: str = "auto", cached_images: int = 16, precision: str = "auto") -> RandomWalkerTool:
        return RandomWalkerTool()

    def propagator(self, device: str = "auto", precision: str = "auto") -> ClassicalPropagator:
        return ClassicalPropagator()

    def identity(self, role: str) -> dict[str, str]:
        return {f"{role}_variant": "random-walker"}


CLASSICAL = ClassicalSegmenter()


class RandomWalkerTool:
    description = "random walker (scikit-image, no weights)"
    spec: Any = CLASSICAL

    def __init__(self, margin: int = 40, max_side: int = 128, beta: float = 2000.0, seed_radius: int = 2) -> None:
        self.margin, self.max_side, self.beta, self.seed_radius = margin, max_side, beta, seed_radius
        self._grey: np.ndarray | None = None
        self._key: str | None = None
        self.embeddings_computed = 0

    def set_image(self, image: np.ndarray, key: str | None = None) -> None:
        key = key or hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)
        if key == self._key:
            return
        self._grey = image.astype(np.float32).mean(axis=2) / 255.0
        self._key = key
        self.embeddings_computed += 1

    def identity(self) -> dict[str, str]:
        return {"tool_variant": "random-walker"}

    def release(self, key: str) -> None:
        if key == self._key:
            self._grey, self._key = None, None

    def predict(self, clicks: list[Click], previous_logits: np.ndarray | None) -> ToolResult:
        from skimage.segmentation import random_walker

        if not clicks:
            raise ValueError("the random walker needs at least one click")
        if self._grey is None:
            raise RuntimeError("set_image() must be called before predict()")
        grey = self._grey
        previous = previous_logits > 0 if previous_logits is not None else np.zeros(grey.shape, bool)
        top, bottom, left, right = self._window(clicks, previous)
        step = max(1, int(np.ceil(max(bottom - top, right - left) / self.max_side)))
        window = grey[top:bottom:step, left:right:step]
        seeds = np.zeros(window.shape, np.int32)
        seeds[[0, -1], :] = 2  # the window's edge is background
        seeds[:, [0, -1]] = 2
        rows, columns = np.ogrid[: window.shape[0], : window.shape[1]]
        for click in clicks:
            row, column = (click.y - top) // step, (click.x - left) // step
            disk = (rows - row) ** 2 + (columns - column) ** 2 <= self.seed_radius**2
            seeds[disk] = 1 if click.positive else 2
        if not (seeds == 1).any():
            return self._result(np.zeros(grey.shape, bool), 1.0)
        probability = random_walker(window, seeds, beta=self.beta, mode="bf", return_full_prob=True)[0]
        small = probability > 0.5
        mask = np.zeros(grey.shape, bool)
        full = np.kron(small, np.ones((step, step), bool))[: bottom - top, : right - left]
        mask[top:bottom, left:right] = full
        mask = ndimage.binary_fill_holes(mask)
        confidence = float(probability[small].mean()) if small.any() else 0.0
        return self._result(mask, confidence)

    def mask_to_logits(self, mask: np.ndarray) -> np.ndarray:
        return np.where(mask, 1.0, -1.0).astype(np.float32)

    def _window(self, clicks: list[Click], previous: np.ndarray) -> tuple[int, int, int, int]:
        rows = [c.y for c in clicks]
        columns = [c.x for c in clicks]
        if previous.any():
            inside_rows, inside_columns = np.flatnonzero(previous.any(axis=1)), np.flatnonzero(previous.any(axis=0))
            rows += [int(inside_rows[0]), int(inside_rows[-1])]
            columns += [int(inside_columns[0]), int(inside_columns[-1])]
        height, width = self._grey.shape
        return (
            max(min(rows) - self.margin, 0),
            min(max(rows) + self.margin + 1, height),
            max(min(columns) - self.margin, 0),
            min(max(columns) + self.margin + 1, width),
        )

    def _result(self, mask: np.ndarray, score: float) -> ToolResult:
        return ToolResult(mask=mask, score=score, logits=self.mask_to_logits(mask))


class ClassicalPropagator:
    """Grows key-slice masks slice by slice with the random walker. The target's grey values are learnt from the
    key slices (the 2nd to 98th percentile inside their masks, widened by ``tolerance`` grey levels); on each
    next slice, the previous slice's mask, eroded, where the grey value is the target's, seeds the target, and
    pixels beyond the previous mask dilated by ``margin``, or of another grey value, seed the background. A slice
    where no target seed is left ends the target in that direction (an empty slice, as SAM 2 would give)."""

    def __init__(
        self, erosion: int = 2, margin: int = 6, max_side: int = 160, beta: float = 2000.0, tolerance: float = 12.0
    ) -> None:
        self.erosion, self.margin, self.max_side, self.beta = erosion, margin, max_side, beta
        self.tolerance = tolerance

    def propagate(
        self,
        volume: np.ndarray,
        key: SliceGeometry,
        key_mask: np.ndarray,
        options: PropagationOptions = DEFAULT_PROPAGATION,
        *,
        extra_keys: dict[int, np.ndarray] | None = None,
        on_progress: Callable[[int, int, int], None] | None = None,
        cancel: threading.Event | None = None,
        partial: bool = False,
    ) -> PropagationResult:
        """As ``SAM2Propagator.propagate``: the same arguments, order, progress and result."""
        first, last = options.span(key)
        keys = check_keys(volume, key, key_mask, extra_keys, first, last)
        inside = np.concatenate([key.at(i).extract(volume)[mask] for i, mask in keys.items()])
        low, high = np.percentile(inside, 2) - self.tolerance, np.percentile(inside, 98) + self.tolerance

        def one_pass(reverse: bool) -> Iterator[tuple[int, np.ndarray, float | None]]:
            start = max(keys) if reverse else min(keys)
            order = range(start, first - 1, -1) if reverse else range(start, last + 1)
            previous = keys[start]
            for index in order:
                if index in keys:
                    plane, score = keys[index], None
                else:
                    grey = key.at(index).extract(volume).astype(np.float32)
                    plane, score = self.next_slice(grey, previous, (low, high))
                previous = plane
                yield index, plane, score

        return run_passes(
            volume.shape, key, keys, first, last, options, one_pass,
            on_progress=on_progress, cancel=cancel, partial=partial,
        )  # fmt: skip

    def next_slice(
        self, grey: np.ndarray, previous: np.ndarray, target_range: tuple[float, float]
    ) -> tuple[np.ndarray, float]:
        """The mask on ``grey`` (0-255) that the previous slice's mask seeds, and the walker's mean probability
        in it."""
        from skimage.segmentation import random_walker

        low, high = target_range
        looks_like_target = (grey >= low) & (grey <= high)
        inside = ndimage.binary_erosion(previous, iterations=self.erosion) & looks_like_target
        if not inside.any():
            return np.zeros(grey.shape, bool), 0.0
        reach = ndimage.binary_dilation(previous, iterations=self.margin)
        rows, columns = np.flatnonzero(reach.any(axis=1)), np.flatnonzero(reach.any(axis=0))
        top, bottom = max(rows[0] - 1, 0), min(rows[-1] + 2, grey.shape[0])
        left, right = max(columns[0] - 1, 0), min(columns[-1] + 2, grey.shape[1])
        step = max(1, int(np.ceil(max(bottom - top, right - left) / self.max_side)))
        window = (slice(top, bottom, step), slice(left, right, step))
        background = ~reach[window] | ~looks_like_target[window]
        seeds = np.where(inside[window], 1, np.where(background, 2, 0)).astype(np.int32)
        if not (seeds == 2).any():
            seeds[[0, -1], :] = 2
            seeds[:, [0, -1]] = 2
        if (seeds == 0).any():
            walker = random_walker(grey[window] / 255.0, seeds, beta=self.beta, mode="bf", return_full_prob=True)
            probability = walker[0]
        else:  # every pixel is a seed already
            probability = (seeds == 1).astype(np.float64)
        small = probability > 0.5
        mask = np.zeros(grey.shape, bool)
        full = np.kron(small, np.ones((step, step), bool))[: bottom - top, : right - left]
        mask[top:bottom, left:right] = full[: bottom - top, : right - left]
        mask = ndimage.binary_fill_holes(mask)
        return mask, float(probability[small].mean()) if small.any() else 0.0
