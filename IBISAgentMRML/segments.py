"""Segments read and written on the volume's grid, whatever transforms the segmentation and the volume sit
under. Writes go through Slicer's segment-editor logic, so the editable area and the intensity range apply,
each write is one undo step and no other segment ever changes."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import AdapterError
from .transforms import ijk_to_world, local_to_world


def check_editable(segmentation_node: Any) -> None:
    """AdapterError unless the segmentation is stored as a binary labelmap (the form written here)."""
    labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    stored = segmentation_node.GetSegmentation().GetSourceRepresentationName()
    if stored != labelmap:
        raise AdapterError(
            f"The segmentation is stored as '{stored}'. IBISAgent edits binary labelmaps: convert it in the Segment "
            "Editor, or choose another segmentation."
        )


def _shape(volume_node: Any) -> tuple[int, int, int]:
    i, j, k = volume_node.GetImageData().GetDimensions()
    return k, j, i


def _grid(matrix: np.ndarray, shape: tuple[int, int, int], values: np.ndarray | None = None) -> Any:
    """A vtkOrientedImageData with this IJK-to-frame matrix and (k, j, i) shape, optionally filled (uint8)."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1)
    image.SetGeometryFromImageToWorldMatrix(slicer.util.vtkMatrixFromArray(matrix))
    if values is not None:
        flat = np.ascontiguousarray(values, dtype=np.uint8).ravel()  # C order (k, j, i): i fastest, as VTK's
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    return image


def _array(image: Any) -> np.ndarray:
    extent = image.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def _volume_grid_in(segmentation_node: Any, volume_node: Any) -> np.ndarray:
    """4 x 4 volume IJK to the segmentation's local frame, where its labelmaps live. Leaving out the
    segmentation's parent transform here is what once wrote masks shifted by it."""
    return np.linalg.inv(local_to_world(segmentation_node)) @ ijk_to_world(volume_node)


def segment_array(segmentation_node: Any, segment_id: str, volume_node: Any) -> np.ndarray:
    """One segment as (k, j, i) bool on the volume's grid (nearest-neighbour resampling, no temporary nodes)."""
    shape = _shape(volume_node)
    labelmap = slicer.vtkOrientedImageData()
    if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
        raise AdapterError(f"The segment '{segment_id}' has no binary labelmap.")
    extent = labelmap.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return np.zeros(shape, dtype=bool)  # an empty segment has an empty extent
    reference = _grid(_volume_grid_in(segmentation_node, volume_node), shape)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, False
    ):
        raise AdapterError(f"Could not resample the segment '{segment_id}' onto the volume.")
    return _array(resampled) != 0


def modifier_labelmap(segmentation_node: Any, volume_node: Any, mask: np.ndarray, reference: Any) -> Any:
    """A (k, j, i) mask on the volume's grid as a labelmap on ``reference`` (the editor's default modifier
    labelmap: the segmentation's reference geometry in its local frame), which intensity masking requires."""
    shape = _shape(volume_node)
    if mask.shape != shape:
        raise AdapterError(f"The mask is {mask.shape}, the volume {shape}.")
    modifier = _grid(_volume_grid_in(segmentation_node, volume_node), shape, mask.astype(bool))
    if slicer.vtkOrientedImageDataResample.DoGeometriesMatch(reference, modifier):
        return modifier
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        modifier, reference, resampled, False, False
    )
    return resampled


class SegmentEditor(Protocol):
    """Writes a whole segment as one undoable edit with the editor's masking (``bypass_masking``: none)."""

    def write(self, segmentation_node: Any, segment_id: str, volume_node: Any, mask: np.ndarray,
              bypass_masking: bool) -> None: ...  # fmt: skip


class LogicEditor:
    """Writes through a ``vtkSlicerSegmentEditorLogic`` with its own editor node (masking and overwrite
    settings) and undo history: the web app's and the command line's editor. (Desktop Slicer's Segment
    Editor keeps its logic private, so the desktop module writes through its effect instead, to join the
    undo history the clinician sees there.)"""

    def __init__(self, scene: Any, application_logic: Any, editor_node: Any = None) -> None:
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLApplicationLogic(application_logic)
        self.logic.SetMRMLScene(scene)
        if editor_node is None:
            editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "IBISAgent segment editor")
        self.logic.SetSegmentEditorNode(editor_node)

    @property
    def editor_node(self) -> Any:
        return self.logic.GetSegmentEditorNode()

    def write(self, segmentation_node: Any, segment_id: str, volume_node: Any, mask: np.ndarray,
              bypass_masking: bool = False) -> None:  # fmt: skip
        """Other segments are never modified: overwrite is "none" for this write (the user's setting comes
        back afterwards). Slicer's ``bypassMasking`` skips the editable area but not the intensity range, so
        a bypassing write turns the range off for its duration too."""
        check_editable(segmentation_node)
        logic, node = self.logic, self.editor_node
        logic.SetSegmentationNode(segmentation_node)
        logic.SetSourceVolumeNode(volume_node)
        logic.SetCurrentSegmentID(segment_id)
        if not logic.ResetModifierLabelmapToDefault():
            raise AdapterError("The segmentation has no reference geometry: select a source volume for it first.")
        modifier = modifier_labelmap(segmentation_node, volume_node, mask, logic.GetModifierLabelmap())
        overwrite, intensity = node.GetOverwriteMode(), node.GetSourceVolumeIntensityMask()
        try:
            node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
            if bypass_masking:
                node.SetSourceVolumeIntensityMask(False)
            logic.SaveStateForUndo()
            logic.ModifySegmentByLabelmap(
                segmentation_node, segment_id, modifier, slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet,
                True, bypass_masking,
            )  # fmt: skip
        finally:
            node.SetOverwriteMode(overwrite)
            node.SetSourceVolumeIntensityMask(intensity)


class MRMLSegment:
    """The driver's SegmentPort over one segment of a segmentation node, on a volume's grid."""

    def __init__(self, segmentation_node: Any, segment_id: str, volume_node: Any, editor: SegmentEditor) -> None:
        check_editable(segmentation_node)
        if not segmentation_node.GetSegmentation().GetSegment(segment_id):
            raise AdapterError(f"There is no segment '{segment_id}' in '{segmentation_node.GetName()}'.")
        self.segmentation_node, self.segment_id, self.volume_node = segmentation_node, segment_id, volume_node
        self.editor = editor

    def read(self) -> np.ndarray:
        return segment_array(self.segmentation_node, self.segment_id, self.volume_node)

    def write(self, mask: np.ndarray) -> None:
        self._check_alive()
        self.editor.write(self.segmentation_node, self.segment_id, self.volume_node, mask, False)

    def restore(self, mask: np.ndarray) -> None:
        self._check_alive()
        self.editor.write(self.segmentation_node, self.segment_id, self.volume_node, mask, True)

    def _check_alive(self) -> None:
        if self.segmentation_node.GetScene() is None or self.volume_node.GetScene() is None:
            raise AdapterError("The segmentation or the volume was removed from the scene: nothing was written.")
