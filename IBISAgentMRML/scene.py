"""A scene without the desktop application (the command line, the tests), set up as Slicer's application
sets up its own, and scene bundles (.mrb)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer

from .errors import AdapterError

# Module logics in the order Slicer's application loads them (Colors is set up first, on its own).
MODULE_LOGICS = (
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Transforms", "vtkSlicerTransformLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("Markups", "vtkSlicerMarkupsLogic"),
    ("Texts", "vtkSlicerTextsLogic"),
)


@dataclass
class HeadlessScene:
    """A scene with its application logic and module logics (held here: the application keeps only weak
    references to them)."""

    scene: Any
    application: Any
    logics: dict[str, Any] = field(default_factory=dict)


def new_scene(cache_directory: str | Path | None = None) -> HeadlessScene:
    """A vtkMRMLScene and its vtkSlicerApplicationLogic, with the module logics attached.

    Why each piece: the cache and data-IO managers are what bundles are read and written with (the cache
    directory is where WriteToMRB packs them; unset, that is the filesystem root); the application logic
    gives the scene its interaction and selection nodes; each logic gets the application logic before its
    scene (Colors first, also as the color logic). Without the Segmentations logic empty segments cannot be
    made ("Unable to construct empty representation type 'Binary labelmap'"); without the Markups logic
    markups are silently left out of saved scenes; without the default slice orientation presets every
    slice node reads "Reformat". vtkMRMLColorLogic rather than vtkSlicerColorLogic, which looks for colour
    files under the desktop application's home."""
    scene = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(cache_directory or tempfile.mkdtemp(prefix="ibisagent-mrml-")))
    scene.SetCacheManager(cache)
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLApplicationLogic(application)
    colors.SetMRMLScene(scene)
    application.SetColorLogic(colors)
    application.SetModuleLogic("Colors", colors)
    headless = HeadlessScene(scene, application, {"Colors": colors})
    for name, class_name in MODULE_LOGICS:
        logic = getattr(slicer, class_name)()
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name, logic)
        headless.logics[name] = logic
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    return headless


def save_mrb(scene: Any, path: str | Path) -> None:
    """The whole scene (volumes, segmentations, markups, the trace) as one Slicer data bundle."""
    if not scene.WriteToMRB(str(path)):
        raise AdapterError(f"Could not save the scene to {path}.")


def load_mrb(scene: Any, path: str | Path, clear: bool = True) -> None:
    if not scene.ReadFromMRB(str(path), clear):
        raise AdapterError(f"Could not load the scene {path}.")
