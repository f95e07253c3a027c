"""Slices of a volume as a clinician sees them in 3D Slicer, and the mappings between model
coordinates, slice pixels, voxel indices (IJK) and physical points (LPS and RAS).

Conventions
- SimpleITK and DICOM use LPS physical coordinates; Slicer shows RAS (x and y negated). Both are given.
- Slicer's default views (vtkMRMLSliceNode::InitializeAxial/Coronal/SagittalMatrix) put, on screen:
  axial: right = patient left, up = anterior; coronal: right = patient left, up = superior;
  sagittal: right = posterior, up = superior. Image rows grow downwards, so in LPS a slice's columns
  grow along +x, +x, +y and its rows along +y, -z, -z for axial, coronal and sagittal.
- Slices are voxel planes, never resampled: for each anatomical axis we take the voxel axis whose
  direction is closest to it (for oblique volumes, the best of the six axis permutations) and flip
  it where needed. This is what Slicer shows after "Rotate to volume plane", and it keeps every click
  on a voxel centre.
- A normalized model coordinate x lies at continuous pixel position x * W (pixel centres at integers),
  the inverse of the training data's px / W; its voxel is the nearest centre, round(x * W).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from ..agent.actions import normalized_to_pixel

Axis = Literal["axial", "coronal", "sagittal"]
AXES: tuple[Axis, ...] = ("axial", "coronal", "sagittal")

# For each view: (LPS axis along the slice normal, (LPS axis, sign) of columns, (LPS axis, sign) of rows).
_VIEWS: dict[str, tuple[int, tuple[int, int], tuple[int, int]]] = {
    "axial": (2, (0, +1), (1, +1)),
    "coronal": (1, (0, +1), (2, -1)),
    "sagittal": (0, (1, +1), (2, -1)),
}


def anatomical_axes(direction: np.ndarray) -> tuple[int, int, int]:
    """For LPS axes x, y, z: the voxel axis (0 = i, 1 = j, 2 = k) that points closest along each."""
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(direction[a, p[a]]) for a in range(3)))
    return best  # best[lps_axis] = voxel axis


@dataclass(frozen=True)
class SliceGeometry:
    """One voxel plane of a volume, oriented as in Slicer's view of the same name."""

    axis: Axis
    index: int
    normal_axis: int  # voxel axis (0 = i, 1 = j, 2 = k) across the slice
    column_axis: int  # voxel axis along slice columns
    column_flip: bool
    row_axis: int  # voxel axis along slice rows
    row_flip: bool
    size: tuple[int, int, int]  # voxels along i, j, k
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3 x 3, columns are the voxel axes in LPS

    @classmethod
    def of(cls, image: sitk.Image, axis: Axis, index: int | None = None) -> SliceGeometry:
        """The slice along ``axis`` at ``index`` (voxel index along the normal; default: the middle)."""
        if axis not in _VIEWS:
            raise ValueError(f"unknown slice axis {axis!r}: use one of {', '.join(AXES)}")
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        voxel_of = anatomical_axes(direction)
        normal, (col_lps, col_sign), (row_lps, row_sign) = _VIEWS[axis]
        normal_axis, column_axis, row_axis = voxel_of[normal], voxel_of[col_lps], voxel_of[row_lps]
        size = tuple(int(s) for s in image.GetSize())
        count = size[normal_axis]
        if index is None:
            index = count // 2
        if not 0 <= index < count:
            raise ValueError(f"{axis} slice {index} is outside 0..{count - 1}")
        return cls(
            axis=axis,
            index=index,
            normal_axis=normal_axis,
            column_axis=column_axis,
            column_flip=direction[col_lps, column_axis] * col_sign < 0,
            row_axis=row_axis,
            row_flip=direction[row_lps, row_axis] * row_sign < 0,
            size=size,  # type: ignore[arg-type]
            origin=tuple(image.GetOrigin()),  # type: ignore[arg-type]
            spacing=tuple(image.GetSpacing()),  # type: ignore[arg-type]
            direction=tuple(image.GetDirection()),
        )

    @property
    def count(self) -> int:
        """Number of slices along this axis."""
        return self.size[self.normal_axis]

    @property
    def width(self) -> int:
        return self.size[self.column_axis]

    @property
    def height(self) -> int:
        return self.size[self.row_axis]

    def at(self, index: int) -> SliceGeometry:
        """The parallel slice at another index."""
        if not 0 <= index < self.count:
            raise ValueError(f"{self.axis} slice {index} is outside 0..{self.count - 1}")
        return SliceGeometry(**{**self.__dict__, "index": index})

    def through(self, ras: np.ndarray) -> SliceGeometry:
        """The parallel slice whose voxel centres lie nearest a RAS point (as a slice view centred there
        shows); ValueError when the point is outside the volume along the slice normal."""
        index = round(float(self.ras_to_ijk(np.asarray(ras, dtype=float))[self.normal_axis]))
        return self.at(index)

    # -- pixels <-> voxels -------------------------------------------------------------------------

    def slab(self, volume: np.ndarray, first: int, last: int) -> np.ndarray:
        """Slices first..last of a (k, j, i) array along this slice's normal, in array order (a view)."""
        return volume[self._along_normal(slice(first, last + 1))]

    def extract(self, volume: np.ndarray) -> np.ndarray:
        """The slice (rows, columns) of a (k, j, i) array, as it appears on screen (a view, not a copy)."""
        plane = volume[self._along_normal(self.index)]
        # plane keeps the two remaining array axes in (k, j, i) order; reorder to (row, column).
        remaining = [a for a in (2, 1, 0) if a != self.normal_axis]
        plane = plane if remaining.index(self.row_axis) == 0 else plane.T
        if self.row_flip:
            plane = plane[::-1]
        if self.column_flip:
            plane = plane[:, ::-1]
        return plane

    def _along_normal(self, where: int | slice) -> tuple[int | slice, ...]:
        """An index of a (k, j, i) array (voxel axis i is array axis 2) that picks ``where`` along the normal."""
        index: list[int | slice] = [slice(None)] * 3
        index[2 - self.normal_axis] = where
        return tuple(index)

    def one_voxel_thick(self, plane: np.ndarray) -> np.ndarray:
        """The slice (rows, columns) as a (k, j, i) array one voxel thick along the normal: what the slice's
        voxels hold, for code that writes one slice of a volume only."""
        shape = [self.size[2], self.size[1], self.size[0]]
        shape[2 - self.normal_axis] = 1
        slab = np.zeros(shape, dtype=plane.dtype)
        SliceGeometry(**{**self.__dict__, "index": 0}).insert(slab, plane)
        return slab

    def from_one_voxel_thick(self, slab: np.ndarray) -> np.ndarray:
        """The inverse of ``one_voxel_thick``: the (rows, columns) slice of a one-voxel-thick array."""
        return SliceGeometry(**{**self.__dict__, "index": 0}).extract(slab)

    def insert(self, volume: np.ndarray, plane: np.ndarray) -> None:
        """Write a (rows, columns) slice back into a (k, j, i) array, in place."""
        if plane.shape != (self.height, self.width):
            raise ValueError(f"slice shape {plane.shape} is not {(self.height, self.width)}")
        target = self.extract(volume)
        target[...] = plane

    def pixel_to_ijk(self, column: float, row: float) -> np.ndarray:
        """Continuous voxel index (i, j, k) of a continuous pixel position."""
        ijk = np.zeros(3)
        ijk[self.normal_axis] = self.index
        ijk[self.column_axis] = (self.width - 1 - column) if self.column_flip else column
        ijk[self.row_axis] = (self.height - 1 - row) if self.row_flip else row
        return ijk

    def ijk_to_pixel(self, ijk: np.ndarray) -> tuple[float, float]:
        """Continuous pixel position (column, row) of a voxel index on this slice's plane."""
        column, row = float(ijk[self.column_axis]), float(ijk[self.row_axis])
        if self.column_flip:
            column = self.width - 1 - column
        if self.row_flip:
            row = self.height - 1 - row
        return column, row

    def normalized_to_voxel(self, x: float, y: float) -> tuple[int, int, int]:
        """The voxel a model click lands on: the nearest pixel centre, as the 2D agent uses."""
        ijk = self.pixel_to_ijk(normalized_to_pixel(x, self.width), normalized_to_pixel(y, self.height))
        return tuple(int(v) for v in ijk)  # type: ignore[return-value]

    # -- voxels <-> physical points ----------------------------------------------------------------

    def ijk_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        matrix = np.array(self.direction).reshape(3, 3)
        return np.asarray(self.origin) + matrix @ (np.asarray(ijk, dtype=float) * np.asarray(self.spacing))

    def lps_to_ijk(self, lps: np.ndarray) -> np.ndarray:
        matrix = np.array(self.direction).reshape(3, 3)
        return np.linalg.solve(matrix, np.asarray(lps, dtype=float) - np.asarray(self.origin)) / np.asarray(
            self.spacing
        )

    def ijk_to_ras(self, ijk: np.ndarray) -> np.ndarray:
        return lps_to_ras(self.ijk_to_lps(ijk))

    def ras_to_ijk(self, ras: np.ndarray) -> np.ndarray:
        return self.lps_to_ijk(lps_to_ras(ras))

    def describe(self) -> dict[str, object]:
        return {"axis": self.axis, "index": self.index, "width": self.width, "height": self.height}


_RAS_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))  # per RAS axis: (towards -, towards +)


def ras_direction_letter(vector: np.ndarray) -> str:
    """The patient direction a world RAS vector points most along, as viewers letter a view's edges: R, L, A,
    P, S or I (ties go to the first axis)."""
    vector = np.asarray(vector, dtype=float)
    axis = int(np.argmax(np.abs(vector)))
    return _RAS_LETTERS[axis][int(vector[axis] > 0)]


def lps_to_ras(point: np.ndarray) -> np.ndarray:
    """LPS <-> RAS (the same operation both ways: negate x and y)."""
    return np.asarray(point, dtype=float) * np.array([-1.0, -1.0, 1.0])


def parse_slice(text: str) -> tuple[Axis, int | None]:
    """``AXIS:INDEX`` or ``AXIS`` (middle slice), e.g. ``axial:42``."""
    axis, _, index = text.partition(":")
    axis = axis.strip().lower()
    if axis not in AXES:
        raise ValueError(f"--slice {text!r}: the axis must be one of {', '.join(AXES)}")
    if not index:
        return axis, None  # type: ignore[return-value]
    try:
        return axis, int(index)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"--slice {text!r}: the index must be a whole number") from None
