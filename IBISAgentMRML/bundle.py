"""A batch result as a Slicer scene a clinician opens to review it: the volume, a segmentation whose segment
is named after the instruction and holds exactly the result's voxels, every click as a labelled control
point at its world position, the slices the volume agent re-checked or still flags as points named after
what happened there ("IBISAgent checked slices": Markups module, click one to go to its slice), and the trace
as the text node "IBISAgent trace"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk

from IBISAgentLib.agent.trace import Trace
from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.workflow import markers_of

from .record import MRMLRecord
from .scene import new_scene, save_mrb
from .segments import LogicEditor, segment_array, set_terminology
from .volumes import volume_node_from_image

SEGMENT_ID = "ibisagent"
SEGMENT_COLOR = (0.13, 0.55, 0.13)  # the overlay's green (34, 139, 34)
CHECKED_NODE_NAME = "IBISAgent checked slices"
CHECKED_COLOR = (0.9, 0.22, 0.21)


def write_bundle(path: str | Path, case: VolumeCase, labelmap: np.ndarray, trace: Trace, volume_name: str) -> None:
    """Write the scene to ``path`` (.mrb). ``labelmap`` is (k, j, i) on ``case``'s grid."""
    headless = new_scene()
    scene = headless.scene
    volume = volume_node_from_image(scene, case.image, volume_name)
    display = volume.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(case.window.width, case.window.level)  # as the agent saw it
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "IBISAgent segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.GetSegmentation().AddEmptySegment(SEGMENT_ID, trace.instruction, SEGMENT_COLOR)
    set_terminology(segmentation, SEGMENT_ID, trace.instruction)
    LogicEditor(scene, headless.application).write(segmentation, SEGMENT_ID, volume, labelmap, True)
    if not np.array_equal(segment_array(segmentation, SEGMENT_ID, volume), labelmap.astype(bool)):
        raise RuntimeError("the segment in the scene does not hold exactly the result's voxels")
    record = MRMLRecord(scene)
    record.show_markers(markers_of(trace.steps))
    record.store_trace(trace.to_json())
    _show_checked_slices(scene, case, trace)
    save_mrb(scene, path)


def checked_slice_labels(trace: Trace) -> dict[int, str]:
    """Slice index -> what the volume agent did there: each re-check's outcome, and the slices still flagged."""
    labels = {s["index"]: f"slice {s['index']}: flagged ({', '.join(s['flags'])})"
              for s in (trace.propagation or {}).get("slices", []) if s["flags"]}  # fmt: skip
    for check in trace.checks or []:
        labels[check["index"]] = f"slice {check['index']}: {check['outcome']} ({', '.join(check['why'])})"
    return labels


def _show_checked_slices(scene, case: VolumeCase, trace: Trace) -> None:  # scene: vtkMRMLScene
    """One control point per checked or flagged slice, at the centre of that slice of the volume."""
    labels = checked_slice_labels(trace)
    if not labels:
        return
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", CHECKED_NODE_NAME)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetSelectedColor(*CHECKED_COLOR)
    node.GetDisplayNode().SetColor(*CHECKED_COLOR)
    for index, label in sorted(labels.items()):
        geometry = case.at(index).geometry
        centre = np.array([(n - 1) / 2 for n in geometry.size], dtype=float)
        centre[geometry.normal_axis] = index
        point = node.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0), label)
        node.SetNthControlPointPositionWorld(point, *geometry.ijk_to_ras(centre))
    node.SetLocked(True)
