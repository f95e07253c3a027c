"""Slice-by-slice propagation of key-slice masks through a volume with a SAM 2 family video predictor.

MedSAM2's 3D procedure, used for every variant: prompt the key slice with the mask, propagate forward,
reset, prompt again and propagate backward; the result is the union of both directions (logits > 0),
optionally reduced to its largest connected component. With several key slices (slices a check corrected)
every one prompts the predictor: forward runs from the first key, backward from the last, so the slices
between keys are segmented by both passes. Frames are rendered from the in-memory volume when the
predictor asks for them and old per-frame memories are dropped, so memory stays flat however many slices
there are. ``run_passes`` is the part every propagator shares (the weight-free one in ``classical.py``
too): order, progress, cancel, stopping, and a record of each slice for the check.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging.geometry import SliceGeometry
from ..models.devices import autocast, resolve_device, resolve_precision
from .sam2_model import build_model
from .variants import MEDSAM2, SAM2Variant

# Frames a propagation step can still look back at: 7 memory frames, and object pointers from up to
# 16 frames (sam2's max_obj_ptrs_in_encoder). Older per-frame outputs are never read again.
_FRAMES_KEPT = 16


class PropagationCancelled(Exception):
    """The propagation was cancelled; nothing was returned."""


@dataclass(frozen=True)
class PropagationOptions:
    """How a key-slice mask grows through its volume, the same from the command line to the server and back:
    slices ``first`` to ``last`` (None: to the volume's end), each direction stopping after
    ``stop_after_empty`` empty slices in a row (0: never), and optionally only the largest connected part."""

    first: int | None = None
    last: int | None = None
    stop_after_empty: int = 3
    largest_component: bool = False

    def span(self, key: SliceGeometry) -> tuple[int, int]:
        """(first, last) in the key slice's volume; ValueError when the range leaves it or misses the key."""
        first = 0 if self.first is None else self.first
        last = key.count - 1 if self.last is None else self.last
        if not 0 <= first <= key.index <= last < key.count:
            raise ValueError(
                f"range {first}:{last} must lie in 0:{key.count - 1} and contain the key slice {key.index}"
            )
        if self.stop_after_empty < 0:
            raise ValueError(f"stop after empty slices must be 0 (never) or more, got {self.stop_after_empty}")
        return first, last


DEFAULT_PROPAGATION = PropagationOptions()


@dataclass
class SliceRecord:
    """What propagation knows of one slice: the mask's area there, the segmenter's own confidence (SAM 2's
    object score logit, > 0 meaning "the object is here"; the random walker's mean probability), and the Dice
    of the forward and backward passes where both segmented it (None where one did)."""

    index: int
    area: int
    score: float | None = None
    agreement: float | None = None


@dataclass
class PropagationResult:
    mask: np.ndarray  # (k, j, i) bool, on the volume's grid
    visited: list[int] = field(default_factory=list)  # slice indices in the order they were segmented
    cancelled: bool = False
    slices: dict[int, SliceRecord] = field(default_factory=dict)  # every slice segmented, by index


# One pass yields (slice index, the slice's mask, its score) in the order it visits them, key slices included.
Pass = Callable[[bool], Iterator[tuple[int, np.ndarray, float | None]]]


def run_passes(
    shape: tuple[int, int, int],
    key: SliceGeometry,
    keys: dict[int, np.ndarray],
    first: int,
    last: int,
    options: PropagationOptions,
    one_pass: Pass,
    *,
    on_progress: Callable[[int, int, int], None] | None = None,
    cancel: threading.Event | None = None,
    partial: bool = False,
) -> PropagationResult:
    """Forward from the first key slice to ``last``, then backward from the last key slice to ``first``, as
    ``one_pass(reverse)`` segments them; the union, with the key masks written as given. A direction stops
    after ``options.stop_after_empty`` empty slices in a row beyond the keys. On cancel it raises
    ``PropagationCancelled``, or returns what is done with ``cancelled=True`` when ``partial`` is set."""
    result = PropagationResult(mask=np.zeros(shape, dtype=bool))
    low, high = min(keys), max(keys)
    # Slices both passes segment from a key on either side that holds the target: there they should agree (next
    # to a key that holds none, a cleared slice, the passes rightly differ about where the target ends).
    compared = _between_targets(keys)
    total = (last - low + 1) + (high - first)
    cancel = cancel or threading.Event()
    forward_planes: dict[int, np.ndarray] = {}  # the forward pass between the keys, to compare with the backward
    scores: dict[int, float] = {}
    agreement: dict[int, float] = {}
    for reverse in (False, True):
        empty_run = 0
        for index, plane, score in one_pass(reverse):
            key.at(index).extract(result.mask)[...] |= plane
            if score is not None:
                scores[index] = min(score, scores.get(index, score))
            if index in compared:
                if reverse:
                    agreement[index] = _dice(forward_planes.pop(index), plane)
                else:
                    forward_planes[index] = plane
            if not (reverse and index == high):
                result.visited.append(index)
                if on_progress is not None:
                    on_progress(len(result.visited), total, index)
            if cancel.is_set():
                if not partial:
                    raise PropagationCancelled()
                result.cancelled = True
                return result
            beyond = index < low if reverse else index > high
            if beyond:
                empty_run = 0 if plane.any() else empty_run + 1
                if options.stop_after_empty and empty_run >= options.stop_after_empty:
                    break
    for index, mask in keys.items():  # key slices are given, not predicted (resampling drifts a voxel)
        key.at(index).insert(result.mask, mask)
    if options.largest_component:
        result.mask = keep_largest_component(result.mask)
    for index in sorted(set(result.visited)):
        area = int(np.count_nonzero(key.at(index).extract(result.mask)))
        result.slices[index] = SliceRecord(index, area, scores.get(index), agreement.get(index))
    return result


def check_keys(
    volume: np.ndarray, key: SliceGeometry, key_mask: np.ndarray, extra: dict[int, np.ndarray] | None, first: int,
    last: int,
) -> dict[int, np.ndarray]:  # fmt: skip
    """Every key slice (the session's and any extra ones) by index, checked against the volume and the range."""
    keys = {key.index: key_mask, **(extra or {})}
    for index, mask in keys.items():
        if mask.shape != (key.height, key.width):
            raise ValueError(f"key mask shape {mask.shape} is not the slice's {(key.height, key.width)}")
        if not first <= index <= last:
            raise ValueError(f"key slice {index} lies outside the range {first}:{last}")
    if volume.dtype != np.uint8 or volume.shape != key.size[::-1]:
        raise ValueError(f"expected the windowed uint8 volume of shape {key.size[::-1]}")
    if not any(mask.any() for mask in keys.values()):
        raise ValueError("the key slice mask is empty: there is nothing to propagate")
    return keys


def _between_targets(keys: dict[int, np.ndarray]) -> set[int]:
    ordered = sorted(keys)
    return {
        index
        for below, above in itertools.pairwise(ordered)
        if keys[below].any() and keys[above].any()
        for index in range(below + 1, above)
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2 * np.count_nonzero(a & b) / total


class SliceFrames(Sequence):
    """The slices of a range as normalized tensors at the model's size on its device, rendered when asked for.

    Each slice travels to the device as 8-bit values and is resized and normalized there with the image
    tool's own transforms (as sam2's ToTensor, Resize, Normalize), so on a GPU the CPU copies a quarter of
    the bytes and does none of the arithmetic.
    """

    def __init__(
        self, volume: np.ndarray, geometry: SliceGeometry, first: int, last: int, transforms: Any, device: str = "cpu"
    ) -> None:
        self.volume, self.geometry, self.first, self.last = volume, geometry, first, last
        self.transforms, self.device = transforms, device

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __getitem__(self, frame: int) -> Any:  # a (3, size, size) float tensor
        import torch

        if not 0 <= frame < len(self):
            raise IndexError(frame)
        # A copy, not ascontiguousarray: a flipped plane with a dimension of 1 counts as contiguous to numpy
        # and keeps its negative stride, which torch.from_numpy refuses.
        plane = self.geometry.at(self.first + frame).extract(self.volume).copy()
        gray = torch.from_numpy(plane).to(self.device)[None].float().div_(255)
        return self.transforms.transforms(gray.expand(3, -1, -1))


def in_memory_state(predictor: Any, frames: Sequence[Any], height: int, width: int) -> dict[str, Any]:
    """The inference state sam2's ``init_state`` builds, over any frame sequence instead of a JPEG folder
    or mp4, and without its frame-0 warm-up (the key slice is rarely frame 0)."""
    from collections import OrderedDict

    return {
        "images": frames,
        "num_frames": len(frames),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": height,
        "video_width": width,
        "device": predictor.device,
        "storage_device": predictor.device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


class SAM2Propagator:
    """Grows a key-slice mask into a 3D mask with a SAM 2 family video predictor (MedSAM2 by default)."""

    def __init__(
        self,
        checkpoint: str | Path | None,
        device: str = "auto",
        variant: SAM2Variant = MEDSAM2,
        precision: str = "auto",
    ) -> None:
        from sam2.utils.transforms import SAM2Transforms

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.variant = variant
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.predictor = build_model(variant, checkpoint, self.device, video=True, precision=self.precision)
        # The image tool's own preprocessing, so propagation sees slices exactly as the agent's tool does.
        self.transforms = SAM2Transforms(resolution=variant.image_size, mask_threshold=0.0)

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
        """Propagate ``key_mask`` (the key slice's (rows, columns) mask), and the masks of ``extra_keys`` (slice
        index -> mask, on the key slice's axis), as ``options`` say.

        ``volume`` is the windowed uint8 (k, j, i) volume. ``on_progress(done, total, slice_index)`` is
        called after every slice. On cancel it raises ``PropagationCancelled``, or returns what is done
        with ``cancelled=True`` when ``partial`` is set.
        """
        import torch

        first, last = options.span(key)
        keys = check_keys(volume, key, key_mask, extra_keys, first, last)
        frames = SliceFrames(volume, key, first, last, self.transforms, self.device)

        def one_pass(reverse: bool) -> Iterator[tuple[int, np.ndarray, float | None]]:
            self.predictor.reset_state(state)
            for index, mask in keys.items():
                self.predictor.add_new_mask(state, frame_idx=index - first, obj_id=1, mask=mask)
            start = (max(keys) if reverse else min(keys)) - first
            for frame, _, logits in self.predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
                outputs = state["output_dict_per_obj"][0]["non_cond_frame_outputs"].get(frame)
                score = float(outputs["object_score_logits"].max()) if outputs is not None else None
                self._forget_old_frames(state, frame, reverse)
                yield first + frame, (logits[0, 0] > 0).cpu().numpy(), score

        # sam2 draws its own progress bar on stderr for every direction; ours is on_progress.
        with torch.inference_mode(), self._autocast(), _quiet_stderr():
            state = in_memory_state(self.predictor, frames, key.height, key.width)
            return run_passes(
                volume.shape, key, keys, first, last, options, one_pass,
                on_progress=on_progress, cancel=cancel, partial=partial,
            )  # fmt: skip

    @staticmethod
    def _forget_old_frames(state: dict[str, Any], frame: int, reverse: bool) -> None:
        for outputs in state["output_dict_per_obj"].values():
            stored = outputs["non_cond_frame_outputs"]
            for old in [f for f in stored if (f - frame if reverse else frame - f) > _FRAMES_KEPT]:
                del stored[old]

    def _autocast(self) -> Any:
        return autocast(self.device, self.precision)


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 3D connected component (face-connected) of a mask."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
