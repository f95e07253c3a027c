"""Volume nodes and slice views as the agent sees them: a VolumeCase in world geometry, on the voxel plane a
view shows, windowed as the view shows it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from IBISAgentLib.imaging.geometry import AXES, Axis, SliceGeometry, anatomical_axes
from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.imaging.volumes import volume_array
from IBISAgentLib.imaging.windowing import CT_PRESETS, Window

from .errors import AdapterError
from .transforms import ijk_to_world

# A view shows a voxel plane when its normal is within this angle of a voxel axis: "Rotate to volume plane"
# aligns to float precision, and half a degree also absorbs the noise of DICOM direction cosines.
ALIGNED_DEGREES = 0.5
_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS, both ways
_AXIS_OF_LPS: dict[int, Axis] = {0: "sagittal", 1: "coronal", 2: "axial"}  # slice normal (LPS axis) -> view
_LPS_OF_AXIS = {name: lps for lps, name in _AXIS_OF_LPS.items()}


def image_from_volume(volume_node: Any) -> sitk.Image:
    """The volume's voxels as a SimpleITK image whose geometry is IJK to world (LPS, as SimpleITK wants).

    Folding the parent transform in here is what makes the agent's slice, the clicks and the markers agree
    with the views; spacing absorbs any scaling of the transform."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise AdapterError("The selected volume has no voxels.")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise AdapterError(f"'{volume_node.GetName()}' has several components per voxel: choose a scalar volume.")
    matrix = ijk_to_world(volume_node)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    axes = matrix[:3, :3] / spacing
    if abs(np.linalg.det(axes)) < 1e-6:
        raise AdapterError(f"'{volume_node.GetName()}' has a degenerate voxel grid (check its transform).")
    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(volume_node)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in _LPS @ matrix[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (_LPS @ axes).ravel()))
    return image


def volume_node_from_image(scene: Any, image: sitk.Image, name: str) -> Any:
    """A scalar volume node holding a SimpleITK image, its grid kept exactly (LPS to RAS)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = _LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = _LPS @ np.array(image.GetOrigin())
    slicer.util.updateVolumeFromArray(node, volume_array(image))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    node.CreateDefaultDisplayNodes()
    return node


@dataclass(frozen=True)
class ViewSlice:
    """The voxel plane of the volume a slice view stands for.

    ``voxel_plane`` says whether the view shows exactly that plane (its normal is a voxel axis: the named
    views of an axis-aligned volume, or any view after "Rotate to volume plane"). A named view of a tilted
    volume shows a resampled plane; ``align_view`` turns it onto the voxel plane the agent works on."""

    axis: Axis
    index: int
    voxel_plane: bool
    tilt_degrees: float  # between the view's normal and the agent slice's voxel axis
    count: int  # voxel planes along that axis: the index runs from 0 to count - 1


def view_slice(volume_node: Any, slice_node: Any) -> ViewSlice:
    """The agent's axis and slice index for what ``slice_node`` shows of ``volume_node``, in any orientation.

    The view's normal is compared with the volume's voxel axes in world space: a match gives the voxel axis
    directly (so a "Reformat" view after "Rotate to volume plane" works); otherwise a view named Axial,
    Coronal or Sagittal stands for the voxel plane closest to that anatomical plane; anything else is truly
    oblique and refused. The index is the voxel plane through the view's centre."""
    matrix = ijk_to_world(volume_node)
    axes = _voxel_axes(matrix)
    slice_to_ras = slicer.util.arrayFromVTKMatrix(slice_node.GetSliceToRAS())
    cosines = np.abs(axes.T @ _view_normal(slice_node))
    voxel_of = anatomical_axes(_LPS @ axes)  # voxel_of[LPS axis] = voxel axis, as SliceGeometry chooses
    best = int(np.argmax(cosines))
    angle = math.degrees(math.acos(min(1.0, float(cosines[best]))))
    name = slice_node.GetLayoutName() or slice_node.GetName() or "slice"
    if angle <= ALIGNED_DEGREES:
        axis, normal_axis, voxel_plane = _AXIS_OF_LPS[voxel_of.index(best)], best, True
    else:
        orientation = (slice_node.GetOrientation() or "").lower()
        if orientation not in AXES:
            raise AdapterError(
                f"The {name} view is oblique to the volume ({angle:.1f}° from its nearest voxel plane): use "
                "'Rotate to volume plane' or set the view to Axial, Coronal or Sagittal."
            )
        axis, voxel_plane = orientation, False  # type: ignore[assignment]
        normal_axis = voxel_of[_LPS_OF_AXIS[axis]]
        angle = math.degrees(math.acos(min(1.0, float(cosines[normal_axis]))))
    centre = np.linalg.solve(matrix, np.append(slice_to_ras[:3, 3], 1.0))[:3]
    index = round(float(centre[normal_axis]))
    count = volume_node.GetImageData().GetDimensions()[normal_axis]
    if not 0 <= index < count:
        raise AdapterError(f"The {name} view does not show '{volume_node.GetName()}': move it onto the volume first.")
    return ViewSlice(axis, index, voxel_plane, angle, count)  # type: ignore[arg-type]


def align_view(slice_node: Any, volume_node: Any) -> bool:
    """Turn a view that shows a resampled plane of a tilted volume onto the volume's voxel planes (as "Rotate
    to volume plane" does), keeping the slice it is on, so that it shows exactly the agent's slice and every
    click lands on a voxel of it. True when the view was turned."""
    shown = view_slice(volume_node, slice_node)
    if shown.voxel_plane:
        return False
    matrix = ijk_to_world(volume_node)
    centre = np.linalg.solve(matrix, np.append(slicer.util.arrayFromVTKMatrix(slice_node.GetSliceToRAS())[:3, 3], 1))
    slice_node.RotateToVolumePlane(volume_node)
    normal_axis = int(np.argmax(np.abs(_voxel_axes(matrix).T @ _view_normal(slice_node))))
    centre[normal_axis] = shown.index  # exactly on the agent's voxel plane, not between two
    slice_node.JumpSliceByCentering(*(matrix @ centre)[:3])
    return True


def show_slice(slice_node: Any, geometry: SliceGeometry) -> None:
    """Move a view that shows the geometry's axis onto its voxel plane (the slice the agent works on), keeping
    where it looks within the plane. ``geometry`` is a VolumeCase's, in world RAS."""
    centre = np.array([(n - 1) / 2 for n in geometry.size], dtype=float)
    centre[geometry.normal_axis] = geometry.index
    slice_node.JumpSliceByOffsetting(*geometry.ijk_to_ras(centre))


def _voxel_axes(matrix: np.ndarray) -> np.ndarray:
    return matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)


def _view_normal(slice_node: Any) -> np.ndarray:
    normal = slicer.util.arrayFromVTKMatrix(slice_node.GetSliceToRAS())[:3, 2]
    return normal / np.linalg.norm(normal)


def xy_to_world(slice_node: Any, x: float, y: float) -> np.ndarray:
    """World RAS of a position in a slice view (pixels from the bottom left, as VTK's interactors report it)."""
    return (slicer.util.arrayFromVTKMatrix(slice_node.GetXYToRAS()) @ np.array([x, y, 0.0, 1.0]))[:3]


def display_window(volume_node: Any) -> Window | None:
    """The window/level the views use, so the agent sees what the clinician sees (named after the preset it is,
    so the trace says "lung"); None (automatic) when unset."""
    display = volume_node.GetDisplayNode()
    if display is None or not hasattr(display, "GetWindow") or display.GetWindow() <= 0:
        return None
    level, width = display.GetLevel(), display.GetWindow()
    name = next((n for n, preset in CT_PRESETS.items() if preset == (level, width)), "as displayed")
    return Window(level, width, name)


def volume_case(volume_node: Any, slice_node: Any, window: str | Window | None = None) -> tuple[VolumeCase, ViewSlice]:
    """The VolumeCase for ``volume_node`` on the voxel plane ``slice_node`` shows (geometry in world RAS)."""
    shown = view_slice(volume_node, slice_node)
    image = image_from_volume(volume_node)
    chosen = window if window is not None else display_window(volume_node)
    return VolumeCase.of(image, f"{shown.axis}:{shown.index}", chosen), shown
