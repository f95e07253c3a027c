"""The web app's scene: trame-slicer's SlicerApp with the extra logics the MRML adapter needs, volumes opened
into it (never through the stock Open, which clears the whole scene, layout node included), segments to
pick or add, and views fitted once they have their real size."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import slicer
from trame_slicer.core import SlicerApp
from vtkmodules.vtkCommonCore import vtkCommand

from IBISAgentLib.imaging.limits import DEFAULT_LIMITS, ImageLimits
from IBISAgentLib.imaging.volume_files import Grid, VolumeFileError, check_volume_file, volume_files_in
from IBISAgentLib.imaging.volumes import VolumeInputError, dicom_series_files
from IBISAgentMRML.segments import set_terminology

from .surfaces import SegmentSurfaces
from .uploads import UploadRefused, write_uploads

VIEW_NAMES = {"Red": "Red (axial)", "Yellow": "Yellow (sagittal)", "Green": "Green (coronal)"}
REFIT_S = 5.0
# The other views render this long after the agent's: its frame (rendered, encoded, sent) goes first.
OTHER_VIEWS_AFTER_S = 0.15
PANEL_AFTER_S = 0.1  # the panel's state, after the agent's frame has gone out and before the other views
THREE_D_AFTER_S = 0.25  # once the other slice views' frames have gone out
READABLE = "The web app opens NIfTI (.nii, .nii.gz), NRRD, MHA/MHD and DICOM series."


class WebScene:
    def __init__(self, limits: ImageLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.app = SlicerApp()
        self.scene = self.app.scene
        # What IBISAgentMRML's headless scene also has: transforms (world geometry) and texts (the trace node,
        # saved with the scene). SlicerApp registers Colors, Markups, Volumes, Segmentations, SubjectHierarchy.
        self.app.register_module_logic(slicer.vtkSlicerTransformLogic(), logic_name="Transforms")
        self.app.register_module_logic(slicer.vtkSlicerTextsLogic(), logic_name="Texts")
        self.surfaces = SegmentSurfaces(self.scene, self.fit_3d_views)
        self.volume: Any = None
        # The opened file's own grid, for saving labelmaps on it (None for a DICOM series: no one file's grid).
        self.source_grid: Grid | None = None
        # Set by the app: called before a new volume replaces the current one (it is readable and within the
        # limits by then: a rejected file never reaches this), and with the new volume after.
        self.before_replace: Callable[[], None] = lambda: None
        self.after_replace: Callable[[Any], None] = lambda _volume: None
        self._shown_to_a_page = False
        self._unfitted: set[str] = set()
        self._fit_until = 0.0
        self._observed: set[str] = set()

    # -- volumes -----------------------------------------------------------------------------------

    def open_path(self, path: str) -> str | None:
        """Open the volume the operator named at start (a file or a DICOM folder); None or a message. The
        same checks as the CLI: limits and truncation from the header, one DICOM series per folder."""
        source = Path(path)
        try:
            if source.is_dir():
                files = dicom_series_files(source, self.limits)
            elif source.is_file():
                check_volume_file(source, self.limits)
                files = [str(source)]
            else:
                return f"{path} does not exist."
        except (VolumeFileError, VolumeInputError) as exc:
            return f"Could not read {source.name} as a volume: {str(exc).removeprefix(f'{source}: ')}."
        return self._open(files, source.name, None if source.is_dir() else Grid.of_file(source))

    def open_uploads(self, uploads: list[dict]) -> str | None:
        """Files from the browser's file input ({name, content, ...}); None or a message. They are written
        under plain names into a fresh folder, and opened only once their headers pass (no file they name
        outside the upload, within the limits, not truncated)."""
        if not uploads:
            return "No file was received."
        with tempfile.TemporaryDirectory(prefix="ibisagent-upload-") as folder:
            try:
                names = write_uploads(uploads, Path(folder))
            except UploadRefused as exc:
                return str(exc)
            label = ", ".join(names[:3]) + ("…" if len(names) > 3 else "")
            try:
                files = volume_files_in(Path(folder), self.limits)
            except VolumeFileError as exc:
                return f"Could not read {label} as a volume: {exc}. {READABLE}"
            grid = Grid.of_file(files[0]) if len(files) == 1 else None  # one volume file, not a DICOM series
            return self._open([str(f) for f in files], label, grid)

    def _open(self, files: list[str], label: str, grid: Grid | None) -> str | None:
        before = set(self._volume_ids())
        try:
            nodes = [n for n in self.app.io_manager.load_volumes(files) if n is not None]
        except Exception as exc:
            nodes, error = [], str(exc)
        else:
            error = ""
        nodes = [n for n in nodes if n.GetID() not in before]
        if not nodes:
            self._remove_new_volumes(before)
            return f"Could not read {label} as a volume{': ' + error if error else ''}. {READABLE}"
        node = max(nodes, key=_voxel_count)
        problem = _check_volume(node)
        if problem:
            self._remove_new_volumes(before)
            return problem
        for extra in nodes:
            if extra is not node:
                self.scene.RemoveNode(extra)
        self.before_replace()
        self._replace_volume(node)
        self.source_grid = grid
        self.after_replace(node)
        return None

    def _volume_ids(self) -> list[str]:
        return [n.GetID() for n in self.scene.GetNodesByClass("vtkMRMLVolumeNode")]

    def _remove_new_volumes(self, before: set[str]) -> None:
        for node in list(self.scene.GetNodesByClass("vtkMRMLVolumeNode")):
            if node.GetID() not in before:
                self.scene.RemoveNode(node)

    def _replace_volume(self, node: Any) -> None:
        """The new volume replaces the old one with its segmentations and markers; the layout stays."""
        self.surfaces.clear()
        for class_name in ("vtkMRMLSegmentationNode", "vtkMRMLMarkupsFiducialNode", "vtkMRMLTextNode"):
            for old in list(self.scene.GetNodesByClass(class_name)):
                self.scene.RemoveNode(old)
        for old in list(self.scene.GetNodesByClass("vtkMRMLVolumeNode")):
            if old is not node:
                self.scene.RemoveNode(old)
        self.volume = node
        display = self.app.display_manager
        # Slice views only: volume rendering stays off (6-14 s per update on llvmpipe).
        display.show_volume_in_slice_background(node)
        display.show_volume_in_slice_foreground(None)
        self.fit_views()

    # -- views -------------------------------------------------------------------------------------

    def slice_node(self, view_name: str) -> Any:
        view = self.app.view_manager.get_view(view_name)
        return None if view is None else view.get_view_node()

    def on_page_connected(self) -> None:
        """The first page to connect has the views fitted at their real size; a reload or a second tab finds
        them as they are (the slices, zoom and camera the session has)."""
        if not self._shown_to_a_page:
            self._shown_to_a_page = True
            self.fit_views()

    def fit_views(self) -> None:
        """Fit every view to the volume; views whose size the browser has not reported yet are fitted again at
        their real size, and for a few seconds every resize fits again (the browser reports the final size of
        its layout in steps; a fit at an intermediate size comes out wrong)."""
        self._fit_until = time.monotonic() + REFIT_S
        for view in self.app.view_manager.get_views():
            tag = view.get_singleton_tag()
            if tag not in self._observed:
                view.render_window().AddObserver(vtkCommand.WindowResizeEvent, lambda *_a, v=view: self._on_resize(v))
                self._observed.add(tag)
            self._unfitted.add(tag)
            if _has_real_size(view):
                self._fit(view)

    @contextmanager
    def view_first(self, view_name: str, then: Callable[[], None] | None = None) -> Iterator[None]:
        """Scene changes made in the block reach the other slice views a moment after this one, and the 3D view
        after them; ``then`` is called before the other views. The views render in turn on the event loop and a
        view's frame goes out only once the renders queued with it are done: the slice views take 5-20 ms each,
        the 3D view 140-200 ms with a surface, so each would otherwise hold back the frames of those before it."""
        three_d = set(self.app.view_manager.get_threed_views())
        held = [
            view
            for view in self.app.view_manager.get_views()
            if view.get_singleton_tag() != view_name and not view.is_render_blocked
        ]
        for view in held:
            view.set_render_blocked(True)
        try:
            yield
        finally:

            def release(views: list[Any]) -> None:
                for view in views:
                    view.set_render_blocked(False)  # which renders them

            loop = asyncio.get_running_loop()
            if then is not None:  # the panel's state goes out before the other views take the CPU
                loop.call_later(PANEL_AFTER_S, then)
            loop.call_later(OTHER_VIEWS_AFTER_S, release, [view for view in held if view not in three_d])
            loop.call_later(THREE_D_AFTER_S, release, [view for view in held if view in three_d])

    def fit_3d_views(self) -> None:
        for view in self.app.view_manager.get_threed_views():
            view.reset_view()
            view.schedule_render()

    def _on_resize(self, view: Any) -> None:
        pending = view.get_singleton_tag() in self._unfitted or time.monotonic() < self._fit_until
        if pending and _has_real_size(view):
            self._fit(view)

    def _fit(self, view: Any) -> None:
        view.reset_view()
        view.schedule_render()
        if self.volume is not None:
            self._unfitted.discard(view.get_singleton_tag())

    # -- segments ----------------------------------------------------------------------------------

    def segment_items(self) -> list[dict[str, str]]:
        """Every segment of every segmentation, as 'node id|segment id' values for a picker."""
        items = []
        for node in self.scene.GetNodesByClass("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            for n in range(segmentation.GetNumberOfSegments()):
                segment_id = segmentation.GetNthSegmentID(n)
                name = segmentation.GetSegment(segment_id).GetName()
                items.append({"title": f"{name} ({node.GetName()})", "value": f"{node.GetID()}|{segment_id}"})
        return items

    def resolve_segment(self, value: str) -> tuple[Any, str] | None:
        if not value or "|" not in value:
            return None
        node_id, segment_id = value.split("|", 1)
        node = self.scene.GetNodeByID(node_id)
        if node is None or not node.GetSegmentation().GetSegment(segment_id):
            return None
        return node, segment_id

    def add_segment(self, name: str) -> str:
        """A new empty segment in the app's segmentation (made on first use), through the Segment Editor so
        that it is an edit Undo takes back; its picker value."""
        node = self._segmentation()
        segment_id = self.app.segmentation_editor.add_empty_segment(segment_name=name)
        set_terminology(node, segment_id, name)  # coded for a DICOM SEG export (liver, tumor, ...)
        return f"{node.GetID()}|{segment_id}"

    def _segmentation(self) -> Any:
        """The segmentation the Segment Editor (hand tools, undo history) works on: made on first use."""
        editor = self.app.segmentation_editor
        node = editor.active_segmentation_node
        if node is not None and node.GetScene() is self.scene:
            return node
        node = editor.create_empty_segmentation_node()
        node.SetName("IBISAgent segmentation")
        editor.set_active_segmentation(node, self.volume)
        return node


def render_slices_plainly(view: Any) -> None:
    """No multisampling in a slice view, as in desktop Slicer by default. trame-slicer asks for 8 samples,
    which on a CPU renderer (llvmpipe) made each render of a 914 x 598 slice view 20-25 ms instead of 3, for
    nothing a slice shows: images and labelmaps are drawn pixel by pixel."""
    view.render_window().SetMultiSamples(0)


def _voxel_count(node: Any) -> int:
    i, j, k = node.GetImageData().GetDimensions() if node.GetImageData() else (0, 0, 0)
    return i * j * k


def _check_volume(node: Any) -> str | None:
    image = node.GetImageData()
    name = node.GetName()
    if image is None:
        return f"'{name}' holds no voxels."
    dims = image.GetDimensions()
    if min(dims) <= 1:
        return (
            f"'{name}' is a 2D image ({dims[0]} x {dims[1]} x {dims[2]}): the web app segments 3D volumes "
            "(CT or MR). For a 2D image use: ibisagent segment IMAGE --prompt …"
        )
    if image.GetNumberOfScalarComponents() != 1:
        components = image.GetNumberOfScalarComponents()
        return f"'{name}' has {components} components per voxel: open a scalar (greyscale) volume."
    return None


def _has_real_size(view: Any) -> bool:
    width, height = view.render_window().GetSize()
    return width > 50 and height > 50
