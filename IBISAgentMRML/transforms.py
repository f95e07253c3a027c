"""Node frames: local (a node's own matrices) to world (views, clicks, markers) through parent transforms."""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer
import vtk

from .errors import AdapterError


def local_to_world(node: Any) -> np.ndarray:
    """4 x 4 matrix from a transformable node's local frame to world RAS (identity when not transformed).

    A non-linear parent transform is refused: voxel planes stop being planes under it, so the agent's slice
    cannot describe what the views show."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise AdapterError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}': harden the transform "
            "(Data module, right-click > Harden transform) or remove it before using IBISAgent."
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def ijk_to_world(volume_node: Any) -> np.ndarray:
    """4 x 4 voxel index (i, j, k, 1) to world RAS of a volume, its parent transform included."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    return local_to_world(volume_node) @ slicer.util.arrayFromVTKMatrix(ijk_to_ras)
