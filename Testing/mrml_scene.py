"""Real MRML nodes for the adapter tests: volumes (oblique, transformed) whose voxel values encode their own
index, transforms, segmentations and slice views whose pixels Slicer's own reslicing computes, so the tests
check what a view really shows, not the adapter's arithmetic. Import only where slicer-core is installed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from IBISAgentMRML import HeadlessScene


class SceneBuilder:
    def __init__(self, headless: HeadlessScene) -> None:
        self.headless = headless
        self.scene = headless.scene
        self.slice_logics: list[Any] = []

    def add_volume(self, name: str, voxels: np.ndarray, ijk_to_ras: np.ndarray, parent: Any = None) -> Any:
        """A scalar volume from (k, j, i) voxels and a 4 x 4 IJK-to-RAS (local) matrix, optionally transformed."""
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        image = vtk.vtkImageData()
        image.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(voxels).ravel(), deep=True))
        node.SetAndObserveImageData(image)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetInterpolate(0)  # nearest neighbour: a view pixel is exactly one voxel
        if parent is not None:
            node.SetAndObserveTransformNodeID(parent.GetID())
        return node

    def add_transform(self, name: str, to_parent: np.ndarray) -> Any:
        node = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
        return node

    def add_segmentation(self, name: str, volume: Any, segments: tuple[str, ...], parent: Any = None):
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        if parent is not None:
            node.SetAndObserveTransformNodeID(parent.GetID())
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        return node, [node.GetSegmentation().AddEmptySegment(n, n) for n in segments]

    def add_view(self, layout_name: str, orientation: str, volume: Any, size: int = 128) -> tuple[Any, Any]:
        """A slice view (its logic reslices as a real view does) showing ``volume``, fitted to it."""
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(self.headless.application)
        logic.SetMRMLScene(self.scene)
        node = logic.AddSliceNode(layout_name)
        node.SetDimensions(size, size, 1)
        node.SetOrientation(orientation)
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
        logic.FitSliceToVolume(volume, size, size)
        self.slice_logics.append(logic)
        return node, logic


def rotation(axis: str, degrees: float) -> np.ndarray:
    """4 x 4 rotation about a RAS axis ('R', 'A' or 'S')."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = {"R": (1, 2), "A": (2, 0), "S": (0, 1)}[axis]
    m = np.eye(4)
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


def translation(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def ijk_matrix(spacing, origin, turn: np.ndarray | None = None) -> np.ndarray:
    """IJK to RAS with this spacing and origin; ``turn`` (4 x 4) rotates the voxel axes (an oblique volume)."""
    m = np.diag([*spacing, 1.0])
    if turn is not None:
        m = turn @ m
    m[:3, 3] = origin
    return m


def coded_voxels(shape_kji: tuple[int, int, int]) -> np.ndarray:
    """int32 voxels whose value encodes their index: 1 + i + 100 j + 10000 k (0 is outside the volume)."""
    k, j, i = np.indices(shape_kji)
    return (1 + i + 100 * j + 10000 * k).astype(np.int32)


def decode(value: float) -> tuple[int, int, int]:
    v = round(value) - 1
    assert v >= 0, "outside the volume"
    return v % 100, (v // 100) % 100, v // 10000


def view_image(logic: Any) -> np.ndarray:
    """What a slice view shows (its background layer, resliced by Slicer's own pipeline) as (y, x) values."""
    reslice = logic.GetBackgroundLayer().GetReslice()
    reslice.Update()
    out = reslice.GetOutput()
    dims = out.GetDimensions()
    return numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(dims[1], dims[0])


def box(shape, lo, hi) -> np.ndarray:
    """(k, j, i) bool array, True for lo <= (i, j, k) < hi."""
    mask = np.zeros(shape, dtype=bool)
    mask[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = True
    return mask
