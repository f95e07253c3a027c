"""A batch result as a Slicer scene a clinician opens to review it: the volume, a segmentation whose segment
is named after the instruction and holds exactly the result's voxels, every click as a labelled control
point at its world position, and the trace as the text node "IBISAgent trace"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from IBISAgentLib.agent.trace import Trace
from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.workflow import markers_of

from .record import MRMLRecord
from .scene import new_scene, save_mrb
from .segments import LogicEditor, segment_array
from .volumes import volume_node_from_image

SEGMENT_ID = "ibisagent"
SEGMENT_COLOR = (0.13, 0.55, 0.13)  # the overlay's green (34, 139, 34)


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
    LogicEditor(scene, headless.application).write(segmentation, SEGMENT_ID, volume, labelmap, True)
    if not np.array_equal(segment_array(segmentation, SEGMENT_ID, volume), labelmap.astype(bool)):
        raise RuntimeError("the segment in the scene does not hold exactly the result's voxels")
    record = MRMLRecord(scene)
    record.show_markers(markers_of(trace.steps))
    record.store_trace(trace.to_json())
    save_mrb(scene, path)
