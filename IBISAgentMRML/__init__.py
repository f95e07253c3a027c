"""The MRML adapter: Slicer's scene (volumes, slice views, segments, markups, text, scene bundles) as the
workflow driver and the agent see it. It imports only MRML and VTK classes present both in desktop 3D Slicer
(5.10 and later) and in the ``slicer-core`` package: no Qt, no application object, module registry or
global scene, no sitkUtils, so the desktop module, the web app and the command line share it.

Frames, the one rule everything here follows: a node's IJK-to-RAS matrix, its labelmaps and its control
points are in the node's local frame; slice views, clicks and markers are in world RAS; local to world is the
node's parent transform (linear only; a non-linear one is refused with a message, never ignored). The
VolumeCase built here carries the volume's IJK-to-world geometry, so every RAS point the driver produces or
consumes is a world point.
"""

from .controller import SessionController, SessionView, StartRequest, whole_number
from .errors import AdapterError
from .record import MRMLRecord, store_trace
from .scene import HeadlessScene, load_mrb, new_scene, save_mrb
from .segments import LogicEditor, MRMLSegment, segment_array
from .volumes import (
    ViewSlice,
    align_view,
    show_slice,
    view_slice,
    volume_case,
    volume_node_from_image,
    xy_to_world,
)

__all__ = [
    "AdapterError",
    "HeadlessScene",
    "LogicEditor",
    "MRMLRecord",
    "MRMLSegment",
    "SessionController",
    "SessionView",
    "StartRequest",
    "ViewSlice",
    "align_view",
    "load_mrb",
    "new_scene",
    "save_mrb",
    "segment_array",
    "show_slice",
    "store_trace",
    "view_slice",
    "volume_case",
    "volume_node_from_image",
    "whole_number",
    "xy_to_world",
]
