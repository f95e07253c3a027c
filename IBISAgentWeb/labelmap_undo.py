"""The Segment Editor's labelmap edits, kept small in the undo history.

trame-slicer records a stroke or an Islands apply as two whole copies of the segmentation, before and after
(about 150 MiB at 512 x 512 x 300, over 4 GiB for 30 strokes), where the edit changed a few thousand voxels.
``compact`` turns such a command into what each changed segment held, bit-packed, in the box where it changed;
undoing writes that back. A command whose segments or labelmap geometry differ before and after (none the
page's tools make) is kept as trame-slicer made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import vtk
from trame_slicer.segmentation.segmentation_undo_command import SegmentationLabelMapUndoCommand
from undo_stack import UndoCommand

from IBISAgentMRML.segments import bounding_extent, extent_index, extent_union, is_empty, layer_mask, write_region

LABELMAP = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


@dataclass(frozen=True)
class PackedMask:
    """A bool array at one bit per voxel."""

    shape: tuple[int, ...]
    bits: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> PackedMask:
        return cls(mask.shape, np.packbits(mask, axis=None))

    def unpack(self) -> np.ndarray:
        return np.unpackbits(self.bits, count=int(np.prod(self.shape))).reshape(self.shape).astype(bool)

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes


@dataclass(frozen=True)
class _Region:
    segment_id: str
    extent: list[int]  # VTK extent (i0, i1, j0, j1, k0, k1) on the labelmaps' grid
    before: PackedMask


class LabelmapEdit(UndoCommand):
    """A labelmap edit by hand: each changed segment's voxels as they were, in the box where they changed."""

    def __init__(self, segmentation: Any, grid: np.ndarray, regions: list[_Region]) -> None:
        super().__init__()
        self._segmentation, self._grid, self._regions = segmentation, grid, regions  # trame-slicer's Segmentation

    @property
    def nbytes(self) -> int:
        return sum(region.before.nbytes for region in self._regions)

    def undo(self) -> None:
        node = self._segmentation.segmentation_node
        for region in self._regions:
            write_region(node, region.segment_id, self._grid, region.extent, region.before.unpack())
        self._segmentation.trigger_modified()

    def redo(self) -> None:
        raise NotImplementedError("the page offers no Redo")


def compact(command: SegmentationLabelMapUndoCommand) -> LabelmapEdit | None:
    """The command as a LabelmapEdit; None where it cannot be (it stays as it is)."""
    states = list(command._segmentation_stack._segmentation_states)  # trame-slicer 2.0: (before, after) copies
    if len(states) != 2:
        return None
    before, after = states
    ids = list(before.GetSegmentIDs())
    grid = _grid(before, after)
    if ids != list(after.GetSegmentIDs()) or grid is None:
        return None
    regions = []
    for segment_id in ids:
        old, new = before.GetSegment(segment_id), after.GetSegment(segment_id)
        old_map, new_map = old.GetRepresentation(LABELMAP), new.GetRepresentation(LABELMAP)
        extent = extent_union(list(old_map.GetExtent()), list(new_map.GetExtent()))
        if extent is None:
            continue  # empty before and after
        was = layer_mask(old_map, old.GetLabelValue(), extent)
        changed = was != layer_mask(new_map, new.GetLabelValue(), extent)
        if changed.any():
            box = bounding_extent(changed, extent)
            regions.append(_Region(segment_id, box, PackedMask.of(was[extent_index(box, extent)])))
    return LabelmapEdit(command._segmentation, grid, regions)


def _grid(*segmentations: Any) -> np.ndarray | None:
    """The labelmaps' one grid (IJK to the segmentation's frame), before and after; None where they differ.
    An empty layer holds nothing and has no grid to compare."""
    layers = [s.GetLayerDataObject(n) for s in segmentations for n in range(s.GetNumberOfLayers())]
    layers = [layer for layer in layers if not is_empty(layer.GetExtent())]
    if not layers:
        return None
    match = slicer.vtkOrientedImageDataResample.DoGeometriesMatch
    if not all(match(layers[0], layer) for layer in layers[1:]):
        return None
    matrix = vtk.vtkMatrix4x4()
    layers[0].GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)
