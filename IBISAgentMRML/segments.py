"""Segments read and written on the volume's grid, whatever transforms the segmentation and the volume sit
under. Writes go through Slicer's segment-editor logic, so the editable area and the intensity range apply,
each write is one undo step and no other segment ever changes."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from IBISAgentLib.imaging.geometry import SliceGeometry

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
    return _oriented(matrix, _whole_extent(shape), values)


def _oriented(matrix: np.ndarray, extent: list[int], values: np.ndarray | None = None) -> Any:
    """A vtkOrientedImageData with this IJK-to-frame matrix over a VTK extent (i0, i1, j0, j1, k0, k1),
    optionally filled with (k, j, i) values (uint8)."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*extent)
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


def _whole_extent(shape: tuple[int, int, int]) -> list[int]:
    """The VTK extent (i0, i1, j0, j1, k0, k1) of a whole (k, j, i) array."""
    return [0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1]


def plane_extent(shape: tuple[int, int, int], normal_axis: int, index: int) -> list[int]:
    """The VTK extent of one voxel plane; ``normal_axis`` 0 = i, 1 = j, 2 = k."""
    extent = _whole_extent(shape)
    extent[2 * normal_axis] = extent[2 * normal_axis + 1] = index
    return extent


def extent_index(extent: list[int], within: list[int] | tuple[int, ...]) -> tuple[slice, slice, slice]:
    """The (k, j, i) index of ``extent`` in an array that covers the extent ``within``."""
    return tuple(slice(extent[2 * a] - within[2 * a], extent[2 * a + 1] - within[2 * a] + 1) for a in (2, 1, 0))  # type: ignore[return-value]


def _extent_shape(extent: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    return extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1


def _intersection(a: list[int], b: list[int]) -> list[int]:
    return [max(x, y) if n % 2 == 0 else min(x, y) for n, (x, y) in enumerate(zip(a, b, strict=True))]


def is_empty(extent: list[int] | tuple[int, ...]) -> bool:
    return extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]


def extent_union(a: list[int], b: list[int]) -> list[int] | None:
    """The smallest extent holding both (an empty one holds nothing); None when both are empty."""
    if is_empty(a) or is_empty(b):
        return None if is_empty(a) and is_empty(b) else (b if is_empty(a) else a)
    return [min(x, y) if n % 2 == 0 else max(x, y) for n, (x, y) in enumerate(zip(a, b, strict=True))]


def plane_array(segmentation_node: Any, segment_id: str, volume_node: Any, normal_axis: int, index: int) -> np.ndarray:
    """One voxel plane of a segment on the volume's grid, (k, j, i) bool one voxel thick along the normal.
    Where the segment's labelmap lies on the volume's grid (the usual case) this reads the stored labelmap
    itself, without copying or resampling the rest of it."""
    extent = plane_extent(_shape(volume_node), normal_axis, index)
    out = np.zeros(_extent_shape(extent), dtype=bool)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    layer = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)  # shared, not a copy
    if segment is None or layer is None:
        raise AdapterError(f"The segment '{segment_id}' has no binary labelmap.")
    stored = list(layer.GetExtent())
    if is_empty(stored) or layer.GetPointData().GetScalars() is None:
        return out
    label = segment.GetLabelValue()
    reference = _oriented(_volume_grid_in(segmentation_node, volume_node), extent)
    if slicer.vtkOrientedImageDataResample.DoGeometriesMatch(layer, reference):
        common = _intersection(extent, stored)
        if not is_empty(common):
            out[extent_index(common, extent)] = _array(layer)[extent_index(common, stored)] == label
        return out
    resampled = slicer.vtkOrientedImageData()  # nearest neighbour onto the plane only: labels stay labels
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        layer, reference, resampled, False, False
    ):
        raise AdapterError(f"Could not resample the segment '{segment_id}' onto the volume.")
    return _array(resampled) == label


def whole_with_plane(
    segmentation_node: Any, segment_id: str, volume_node: Any, normal_axis: int, index: int, plane: np.ndarray
) -> np.ndarray:
    """The whole segment with one voxel plane replaced by ``plane`` ((k, j, i), one voxel thick): for writers
    that can only write a whole segment."""
    whole = segment_array(segmentation_node, segment_id, volume_node)
    whole[extent_index(plane_extent(whole.shape, normal_axis, index), _whole_extent(whole.shape))] = plane
    return whole


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

    def write_plane(self, segmentation_node: Any, segment_id: str, volume_node: Any, normal_axis: int, index: int,
                    plane: np.ndarray) -> None:  # fmt: skip
        """Voxel plane ``index`` along ``normal_axis`` becomes ``plane`` ((k, j, i), one voxel thick) as one
        undoable edit with the editor's masking; nothing outside the plane changes."""
        ...


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

    def write_plane(self, segmentation_node: Any, segment_id: str, volume_node: Any, normal_axis: int, index: int,
                    plane: np.ndarray) -> None:  # fmt: skip
        """One plane as one undo step. The voxels to remove (old and not new) are cleared, then those to add
        (new and not old) go in through Slicer's Add with a modifier no larger than they are: Add touches only
        voxels inside its modifier, where Set clears the rest of the segment first whatever extent it is given.
        The editable area and intensity range are worked out on the plane alone, as the logic combines them,
        and the edit goes in with masking off: the logic would compute both masks over the whole volume on every
        call, and its Remove makes the whole current segment editable in "inside one segment" mode. Where the
        segmentation's labelmaps do not lie on the volume's grid, the whole segment is written instead."""
        check_editable(segmentation_node)
        logic, node = self.logic, self.editor_node
        logic.SetSegmentationNode(segmentation_node)
        logic.SetSourceVolumeNode(volume_node)
        logic.SetCurrentSegmentID(segment_id)
        if not logic.UpdateReferenceGeometryImage():  # unlike ResetModifierLabelmapToDefault, allocates nothing
            raise AdapterError("The segmentation has no reference geometry: select a source volume for it first.")
        extent = plane_extent(_shape(volume_node), normal_axis, index)
        grid = _volume_grid_in(segmentation_node, volume_node)
        reference = _oriented(grid, extent)
        if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(logic.GetReferenceGeometryImage(), reference):
            whole = whole_with_plane(segmentation_node, segment_id, volume_node, normal_axis, index, plane)
            self.write(segmentation_node, segment_id, volume_node, whole)
            return
        new = np.asarray(plane, dtype=bool).reshape(_extent_shape(extent))
        old = plane_array(segmentation_node, segment_id, volume_node, normal_axis, index)
        editable = self._editable(segmentation_node, segment_id, reference)
        add, remove = new & ~old & editable, old & ~new & editable
        if not add.any() and not remove.any():
            return
        overwrite, intensity, mode = node.GetOverwriteMode(), node.GetSourceVolumeIntensityMask(), node.GetMaskMode()
        modifying = node.StartModify()  # the settings flip and come back: at most one Modified event
        try:
            node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
            node.SetSourceVolumeIntensityMask(False)
            node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
            logic.SaveStateForUndo()
            layer = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
            if remove.any():
                # Cleared in the stored labelmap itself (removed voxels lie inside it) without an event, so the
                # Add announces both: a segmentation that keeps a closed surface (Slicer's "Show 3D") rebuilds it
                # for each announced edit.
                label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
                stored = list(layer.GetExtent())
                common = _intersection(extent, stored)
                voxels = _array(layer)[extent_index(common, stored)]  # a view of the labelmap's own memory
                voxels[remove[extent_index(common, extent)] & (voxels == label)] = 0
            if add.any():
                modifier = _cropped(grid, add, extent)
                logic.ModifySegmentByLabelmap(
                    segmentation_node,
                    segment_id,
                    modifier,
                    slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd,
                    True,
                    True,
                )
            else:
                layer.Modified()
        finally:
            node.SetOverwriteMode(overwrite)
            node.SetSourceVolumeIntensityMask(intensity)
            node.SetMaskMode(mode)
            node.EndModify(modifying)

    def _editable(self, segmentation_node: Any, segment_id: str, reference: Any) -> np.ndarray:
        """The editable voxels of the plane ``reference`` covers: the mask mode's area (Slicer's own
        GenerateEditMask) within the intensity range of the aligned source volume, where that is on."""
        logic, node = self.logic, self.editor_node
        editable = np.ones(_extent_shape(reference.GetExtent()), dtype=bool)
        if node.GetMaskMode() != slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere:
            mask = slicer.vtkOrientedImageData()
            if not segmentation_node.GenerateEditMask(
                mask, node.GetMaskMode(), reference, segment_id, node.GetMaskSegmentID() or ""
            ):
                raise AdapterError("Could not work out the editable area.")
            editable &= _array(mask) == 0
        if node.GetSourceVolumeIntensityMask():
            if not logic.UpdateAlignedSourceVolume():
                raise AdapterError("Could not align the source volume for the intensity range.")
            threshold = vtk.vtkImageThreshold()
            threshold.SetInputData(logic.GetAlignedSourceVolume())
            low, high = node.GetSourceVolumeIntensityMaskRange()
            threshold.ThresholdBetween(low, high)
            threshold.SetInValue(1)
            threshold.SetOutValue(0)
            threshold.SetOutputScalarTypeToUnsignedChar()
            threshold.UpdateExtent(reference.GetExtent())  # the plane only
            inside = threshold.GetOutput()
            editable &= _array(inside)[extent_index(list(reference.GetExtent()), inside.GetExtent())] != 0
        return editable


def _cropped(grid: np.ndarray, values: np.ndarray, extent: list[int]) -> Any:
    """A modifier holding ``values`` ((k, j, i) over ``extent``) cropped to their bounding box: a smaller
    modifier keeps Slicer from padding the segment's labelmap to it and shrinking it back on every edit."""
    box = bounding_extent(values, extent)
    return _oriented(grid, box, values[extent_index(box, extent)])


def bounding_extent(values: np.ndarray, extent: list[int]) -> list[int]:
    """The VTK extent of the bounding box of the True voxels of ``values`` ((k, j, i) over ``extent``; some)."""
    box = []
    for axis in (2, 1, 0):  # i, j, k are numpy axes 2, 1, 0
        present = np.flatnonzero(values.any(axis=tuple(a for a in range(3) if a != axis)))
        start = extent[2 * (2 - axis)]
        box += [start + int(present[0]), start + int(present[-1])]
    return box


def layer_mask(labelmap: Any, label: int, extent: list[int]) -> np.ndarray:
    """The voxels of ``label`` in a (shared) labelmap layer over a VTK ``extent`` of its own IJK, (k, j, i)
    bool; False where the layer does not reach."""
    out = np.zeros(_extent_shape(extent), dtype=bool)
    stored = list(labelmap.GetExtent())
    common = _intersection(extent, stored)
    if not is_empty(common) and labelmap.GetPointData().GetScalars() is not None:
        out[extent_index(common, extent)] = _array(labelmap)[extent_index(common, stored)] == label
    return out


def set_terminology(segmentation_node: Any, segment_id: str, instruction: str) -> None:
    """Code the segment from the instruction that names it (Slicer's terminology tag), so that Slicer's DICOM
    SEG export gives it a category and type (liver, tumor, ...; generic Tissue otherwise)."""
    from IBISAgentLib.pacs.terms import slicer_terminology

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    segment.SetTag(segment.GetTerminologyEntryTagName(), slicer_terminology(instruction))


def segment_voxels(segmentation_node: Any, segment_id: str) -> int:
    """How many voxels the segment holds, counted in its stored labelmap (no copy, no resampling)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    layer = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if segment is None or layer is None or is_empty(layer.GetExtent()) or layer.GetPointData().GetScalars() is None:
        return 0
    return int(np.count_nonzero(_array(layer) == segment.GetLabelValue()))


def write_region(
    segmentation_node: Any, segment_id: str, grid: np.ndarray, extent: list[int], values: np.ndarray
) -> None:
    """The segment becomes ``values`` ((k, j, i) bool) over a VTK ``extent`` of ``grid`` (its labelmaps' IJK to
    the segmentation's frame), exactly and in its stored labelmap itself (grown to the extent where needed):
    no masking, no resampling. For putting back what an edit changed: a voxel it takes from another segment of
    the same layer is one that segment took from it in the edit, and is put back too. The caller announces the
    change (the node's Modified) once it has written every segment."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    layer = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if segment is None or layer is None:
        raise AdapterError(f"The segment '{segment_id}' has no binary labelmap.")
    label = segment.GetLabelValue()
    values = np.asarray(values, dtype=bool)
    stored = list(layer.GetExtent())
    has_voxels = not is_empty(stored) and layer.GetPointData().GetScalars() is not None
    if has_voxels and not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(layer, _oriented(grid, extent)):
        raise AdapterError(f"The segment '{segment_id}' is no longer on the grid it was edited on.")
    if not has_voxels or _intersection(extent, stored) != extent:
        stored = _grow(layer, grid, stored if has_voxels else None, extent)
    voxels = _array(layer)[extent_index(extent, stored)]  # a view of the labelmap's own memory
    voxels[~values & (voxels == label)] = 0
    voxels[values] = label
    layer.Modified()


def _grow(layer: Any, grid: np.ndarray, stored: list[int] | None, extent: list[int]) -> list[int]:
    """The layer's labelmap over its extent and ``extent`` together, what it held kept; its new extent."""
    union = extent if stored is None else extent_union(stored, extent)
    dtype = _array(layer).dtype if stored is not None else np.uint8
    grown = np.zeros(_extent_shape(union), dtype=dtype)
    if stored is not None:
        grown[extent_index(stored, union)] = _array(layer)
    layer.SetExtent(*union)
    layer.SetGeometryFromImageToWorldMatrix(slicer.util.vtkMatrixFromArray(grid))
    layer.GetPointData().SetScalars(numpy_support.numpy_to_vtk(grown.ravel(), deep=True))
    return union


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

    def read_plane(self, geometry: SliceGeometry) -> np.ndarray:
        slab = plane_array(self.segmentation_node, self.segment_id, self.volume_node, geometry.normal_axis,
                           geometry.index)  # fmt: skip
        return geometry.from_one_voxel_thick(slab)

    def write_plane(self, geometry: SliceGeometry, plane: np.ndarray) -> None:
        self._check_alive()
        self.editor.write_plane(self.segmentation_node, self.segment_id, self.volume_node, geometry.normal_axis,
                                geometry.index, geometry.one_voxel_thick(plane))  # fmt: skip

    def write(self, mask: np.ndarray) -> None:
        self._check_alive()
        self.editor.write(self.segmentation_node, self.segment_id, self.volume_node, mask, False)

    def restore(self, mask: np.ndarray) -> None:
        self._check_alive()
        self.editor.write(self.segmentation_node, self.segment_id, self.volume_node, mask, True)

    def _check_alive(self) -> None:
        if self.segmentation_node.GetScene() is None or self.volume_node.GetScene() is None:
            raise AdapterError("The segmentation or the volume was removed from the scene: nothing was written.")
