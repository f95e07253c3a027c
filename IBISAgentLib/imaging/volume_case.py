"""A volume prepared for the agent: read once, windowed once, sliced as the clinician sees it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .geometry import SliceGeometry, parse_slice
from .limits import DEFAULT_LIMITS, ImageLimits
from .rendering import to_rgb_uint8
from .volumes import VolumeInputError, read_labelmap, read_volume, volume_array
from .windowing import Window, apply_window, check_finite, choose_window


@dataclass
class VolumeCase:
    image: sitk.Image
    window: Window
    windowed: np.ndarray  # (k, j, i) uint8: what the agent, the tool and the propagation all see
    geometry: SliceGeometry  # the key slice

    @classmethod
    def load(
        cls,
        path: str | Path,
        slice_spec: str | None = None,
        window: str | Window | None = None,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> VolumeCase:
        """Raises VolumeInputError (bad file) or ValueError (bad slice or window) with a one-line reason."""
        image = read_volume(path, limits)
        try:
            check_finite(volume_array(image))
        except ValueError as exc:
            raise VolumeInputError(f"{path}: {exc}") from exc
        return cls.of(image, slice_spec, window)

    @classmethod
    def of(cls, image: sitk.Image, slice_spec: str | None = None, window: str | Window | None = None) -> VolumeCase:
        """A case over an image already in memory (the server builds its cases from uploads)."""
        voxels = volume_array(image)
        chosen = choose_window(voxels, window)
        axis, index = parse_slice(slice_spec or "axial")
        return cls(image, chosen, apply_window(voxels, chosen), SliceGeometry.of(image, axis, index))

    def at(self, index: int) -> VolumeCase:
        """The same volume and window on another slice of the same axis (the arrays are shared, not copied)."""
        return VolumeCase(self.image, self.window, self.windowed, self.geometry.at(index))

    @property
    def slice_spec(self) -> str:
        return f"{self.geometry.axis}:{self.geometry.index}"

    def slice_rgb(self) -> np.ndarray:
        return to_rgb_uint8(np.ascontiguousarray(self.geometry.extract(self.windowed)))

    def slice_of_labelmap(self, path: str | Path) -> np.ndarray:
        """The key slice of a labelmap on the volume's grid (e.g. Slicer's .seg.nrrd export)."""
        return np.ascontiguousarray(self.geometry.extract(read_labelmap(path, self.image)))

    def place(self, mask: np.ndarray) -> np.ndarray:
        """A (k, j, i) mask that holds ``mask`` on the key slice and nothing elsewhere."""
        volume = np.zeros(self.windowed.shape, dtype=bool)
        self.geometry.insert(volume, mask)
        return volume
