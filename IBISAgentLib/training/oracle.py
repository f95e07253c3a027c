"""The paper's automated click simulation (Xu et al. 2016), as a policy the agent session can run.

The next click goes to the deepest point of the larger error region: false negatives (target the mask
misses) give a positive click, false positives (mask outside the target) a negative one. Depth is the
Euclidean distance to the region's edge, with the image border and already-clicked pixels counted as
outside, so clicks land well inside errors and never on a pixel clicked before.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..agent.actions import Action, format_response, pixel_to_normalized
from ..agent.interfaces import Click, PolicyRequest

DEFAULT_IOU_THRESHOLD = 0.85


def iou(ground_truth: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union; 1.0 when both are empty (nothing to find, nothing found)."""
    union = np.count_nonzero(ground_truth | mask)
    return 1.0 if union == 0 else np.count_nonzero(ground_truth & mask) / union


def depth(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest non-region pixel, the image border counting as outside."""
    padded = np.pad(region, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def next_click(
    ground_truth: np.ndarray, mask: np.ndarray, clicked: list[Click] | tuple[Click, ...] = ()
) -> Click | None:
    """The oracle's next click, or None when no error region is left to click in."""
    false_negative = ground_truth & ~mask
    false_positive = ~ground_truth & mask
    for click in clicked:
        false_negative[click.y, click.x] = False
        false_positive[click.y, click.x] = False
    depth_fn, depth_fp = depth(false_negative), depth(false_positive)
    best_fn, best_fp = depth_fn.max(initial=0.0), depth_fp.max(initial=0.0)
    if best_fn == 0 and best_fp == 0:
        return None
    positive = best_fn >= best_fp
    row, column = np.unravel_index(np.argmax(depth_fn if positive else depth_fp), mask.shape)
    return Click(int(column), int(row), positive)


class OraclePolicy:
    """Answers like the model would, from the ground truth: click the largest error, or terminate once the
    mask reaches ``threshold`` IoU or no error is left. The ground truth is the image's (H, W) mask, or a
    (k, j, i) labelmap on a volume's grid, cut at whatever slice the request's session works on."""

    def __init__(self, ground_truth: np.ndarray, threshold: float = DEFAULT_IOU_THRESHOLD) -> None:
        self.ground_truth = ground_truth.astype(bool)
        self.threshold = threshold
        self.description = f"oracle clicker (IoU >= {threshold:g})"

    def generate(self, request: PolicyRequest, cancel: threading.Event) -> str:
        truth = self.ground_truth
        if truth.ndim == 3:
            if request.case is None:
                raise ValueError("a volume's ground truth needs a session on a slice of that volume")
            truth = np.ascontiguousarray(request.case.geometry.extract(truth))
        mask = request.mask if request.mask is not None else np.zeros(truth.shape, bool)
        if mask.shape != truth.shape:
            raise ValueError(f"ground truth {truth.shape} does not match the image {mask.shape}")
        score = iou(truth, mask)
        click = None if score >= self.threshold else next_click(truth, mask, request.clicks)
        if click is None:
            answer = "The target is absent." if not truth.any() else "The mask matches the target."
            return format_response(f"The mask overlaps the target with IoU {score:.2f}.", Action("terminate"), answer)
        height, width = mask.shape
        action = Action(
            "positive" if click.positive else "negative",
            pixel_to_normalized(click.x, width),
            pixel_to_normalized(click.y, height),
        )
        region = "a part of the target the mask misses" if click.positive else "an area the mask wrongly includes"
        return format_response(f"IoU is {score:.2f}; the largest error is {region}.", action)


class ReferenceOracle:
    """``--mllm oracle:REFERENCE``: the oracle on whatever slice a session works on, its ground truth cut from a
    reference labelmap on the volume's grid (non-zero voxels), or a 2D mask for a 2D image. On a slice where the
    reference is empty it answers Terminate with "The target is absent.", as the released model does."""

    def __init__(self, reference: Path, threshold: float = DEFAULT_IOU_THRESHOLD) -> None:
        self.reference, self.threshold = reference, threshold
        self.description = f"oracle on {reference.name} (IoU >= {threshold:g})"
        self._labels: tuple[int, np.ndarray] | None = None  # (id of the volume it was read for, its voxels)
        self._lock = threading.Lock()  # sessions on several threads share one oracle

    def generate(self, request: PolicyRequest, cancel: threading.Event) -> str:
        return OraclePolicy(self._ground_truth(request), self.threshold).generate(request, cancel)

    def _ground_truth(self, request: PolicyRequest) -> np.ndarray:
        """The 2D mask, or the labelmap on the request's volume (read once per volume)."""
        from ..imaging.images import read_mask
        from ..imaging.volumes import read_labelmap

        case = request.case
        if case is None:
            return read_mask(self.reference, request.image.shape[:2])
        with self._lock:
            if self._labels is None or self._labels[0] != id(case.image):
                self._labels = (id(case.image), read_labelmap(self.reference, case.image))
            return self._labels[1]
