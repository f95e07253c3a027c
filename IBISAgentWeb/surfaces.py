"""The segments' surfaces in the 3D view, built off the event loop.

Slicer's "Show 3D" keeps a closed-surface representation inside the segmentation, and the segment-editor logic
rebuilds it before an edit returns: 0.5-1 s for a large segment on two cores, which every correction click
waited for before its slice view could go out. Here the segmentation holds its labelmaps alone (Slicer's 3D
displayable manager then draws nothing for it). Once a burst of edits settles, copies of the changed segments
are turned into surfaces in a worker thread and each replaces the polydata of a model node the 3D view draws;
the previous surface stays on screen until the next is ready. The model nodes are display only: hidden from
editors and never saved.

The surface is VTK's surface nets (smoothed, as Slicer's "Surface nets" conversion option), not Slicer's own
conversion rule: run in a thread, that rule keeps the GIL from the event loop for its whole duration (measured:
a 1.2 s conversion let a waiting thread run once), where VTK's filters release it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import slicer
import vtk

SURFACE = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
SETTLE_S = 0.2  # edits come in bursts (a click writes, then its markers; a propagation writes batches)
EVENTS = (
    slicer.vtkSegmentation.SourceRepresentationModified,
    slicer.vtkSegmentation.SegmentAdded,
    slicer.vtkSegmentation.SegmentRemoved,
    slicer.vtkSegmentation.SegmentModified,
    vtk.vtkCommand.ModifiedEvent,  # the node's segmentation object replaced
)

Key = tuple[str, str]  # (segmentation node ID, segment ID)
log = logging.getLogger(__name__)


class SegmentSurfaces:
    """Shows the surfaces of every segment of the segmentations passed to ``show`` and keeps them current."""

    def __init__(self, scene: Any, on_first_surface: Callable[[], None]) -> None:
        self.scene = scene
        self.on_first_surface = on_first_surface  # the 3D view has nothing to fit to until a surface exists
        self._shown: dict[str, tuple[Any, list[int]]] = {}  # segmentation node ID: (node, observer tags)
        self._models: dict[Key, Any] = {}
        self._drawn: dict[Key, int] = {}  # the modified time of the labelmap each model shows
        self._dirty = False
        self._task: asyncio.Task | None = None

    def show(self, segmentation_node: Any) -> None:
        node_id = segmentation_node.GetID()
        if node_id not in self._shown:
            if segmentation_node.GetSegmentation().ContainsRepresentation(SURFACE):
                segmentation_node.RemoveClosedSurfaceRepresentation()  # else every edit rebuilds it in place
            tags = [segmentation_node.AddObserver(event, lambda *_: self.request()) for event in EVENTS]
            self._shown[node_id] = (segmentation_node, tags)
        self.request()

    def clear(self) -> None:
        """Before the segmentations go (a new volume): their models go too, and a surface under way is dropped
        when it is ready."""
        for node, tags in self._shown.values():
            for tag in tags:
                node.RemoveObserver(tag)
        self._shown.clear()
        for model in self._models.values():
            self.scene.RemoveNode(model)
        self._models.clear()
        self._drawn.clear()

    def request(self) -> None:
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._update())

    async def wait_idle(self) -> None:
        """Until every requested update is on screen."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _update(self) -> None:
        while self._dirty:
            self._dirty = False
            await asyncio.sleep(SETTLE_S)
            self._remove_stale_models()
            changed = self._changed_segments()
            try:
                surfaces = await asyncio.to_thread(_surfaces, changed)
            except Exception:  # a surface is a view of the segment: log it, keep the last one on screen
                log.exception("Could not build the 3D surfaces")
                continue
            self._install(changed, surfaces)
            self._restyle()

    def _changed_segments(self) -> dict[Key, tuple[int, Any]]:
        """Each segment whose labelmap changed since its model was drawn: the labelmap's modified time and a copy
        of the segment's own voxels (made here, on the thread that owns the scene; None for an empty segment)."""
        changed: dict[Key, tuple[int, Any]] = {}
        for node_id, (node, _tags) in self._shown.items():
            segmentation = node.GetSegmentation()
            for n in range(segmentation.GetNumberOfSegments()):
                segment_id = segmentation.GetNthSegmentID(n)
                stored = node.GetBinaryLabelmapInternalRepresentation(segment_id)
                key = (node_id, segment_id)
                if stored is None or self._drawn.get(key) == stored.GetMTime():
                    continue
                copy = slicer.vtkOrientedImageData()
                node.GetBinaryLabelmapRepresentation(segment_id, copy)  # 0/1, cropped to the segment
                changed[key] = (stored.GetMTime(), None if copy.IsEmpty() else copy)
        return changed

    def _install(self, changed: dict[Key, tuple[int, Any]], surfaces: dict[Key, Any]) -> None:
        was_empty = not any(_has_points(model) for model in self._models.values())
        for key, (mtime, _copy) in changed.items():
            if self._segment(key) is None:
                continue  # it went while the thread worked
            model = self._models.get(key) or self._new_model(key)
            model.SetAndObservePolyData(surfaces.get(key) or vtk.vtkPolyData())
            self._drawn[key] = mtime
        if was_empty and any(_has_points(model) for model in self._models.values()):
            self.on_first_surface()

    def _restyle(self) -> None:
        """Name, colour and place follow the segment (cheap: done on every update)."""
        for key, model in self._models.items():
            segment = self._segment(key)
            if segment is None:
                continue
            model.SetName(f"{segment.GetName()} surface")
            model.GetDisplayNode().SetColor(*segment.GetColor())
            model.SetAndObserveTransformNodeID(self._shown[key[0]][0].GetTransformNodeID())

    def _new_model(self, key: Key) -> Any:
        model = self.scene.AddNewNodeByClass("vtkMRMLModelNode")
        model.SetHideFromEditors(True)
        model.SetSaveWithScene(False)
        model.CreateDefaultDisplayNodes()
        display = model.GetDisplayNode()
        display.SetSaveWithScene(False)
        display.SetVisibility2D(False)  # the slice views draw the labelmap itself
        display.SetVisibility3D(True)
        for view in self.scene.GetNodesByClass("vtkMRMLViewNode"):  # 3D views only: slice views skip its updates
            display.AddViewNodeID(view.GetID())
        self._models[key] = model
        return model

    def _remove_stale_models(self) -> None:
        """Models of segments that are no longer there."""
        for key, model in list(self._models.items()):
            if self._segment(key) is None:
                self.scene.RemoveNode(model)
                del self._models[key]
                self._drawn.pop(key, None)

    def _segment(self, key: Key) -> Any:
        """The shown segment a key names; None once it or its segmentation is gone."""
        shown = self._shown.get(key[0])
        return None if shown is None else shown[0].GetSegmentation().GetSegment(key[1])


def _surfaces(changed: dict[Key, tuple[int, Any]]) -> dict[Key, Any]:
    """The worker thread's job: a surface for each non-empty copy (the copies are this job's own)."""
    return {key: segment_surface(copy) for key, (_mtime, copy) in changed.items() if copy is not None}


def segment_surface(labelmap: Any) -> Any:
    """A smoothed closed surface, with point normals, around the 1-voxels of a binary vtkOrientedImageData, in
    the frame of its image-to-world matrix (the segmentation's own frame). The voxels are read in index space
    and placed by the matrix, so oblique grids come out right; the one-voxel pad closes a segment that touches
    the edge of its labelmap."""
    image = vtk.vtkImageData()
    image.SetExtent(labelmap.GetExtent())
    image.GetPointData().SetScalars(labelmap.GetPointData().GetScalars())
    i0, i1, j0, j1, k0, k1 = labelmap.GetExtent()
    pad = vtk.vtkImageConstantPad()
    pad.SetInputData(image)
    pad.SetOutputWholeExtent(i0 - 1, i1 + 1, j0 - 1, j1 + 1, k0 - 1, k1 + 1)
    nets = vtk.vtkSurfaceNets3D()
    nets.SetInputConnection(pad.GetOutputPort())
    nets.SetLabel(0, 1)
    nets.SetOutputMeshTypeToTriangles()
    normals = vtk.vtkTriangleMeshPointNormals()
    normals.SetInputConnection(nets.GetOutputPort())
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    placed = vtk.vtkTransformPolyDataFilter()
    placed.SetTransform(transform)
    placed.SetInputConnection(normals.GetOutputPort())
    placed.Update()
    surface = vtk.vtkPolyData()
    surface.ShallowCopy(placed.GetOutput())
    return surface


def _has_points(model: Any) -> bool:
    polydata = model.GetPolyData()
    return polydata is not None and polydata.GetNumberOfPoints() > 0
