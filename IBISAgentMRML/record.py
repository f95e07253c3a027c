"""The session's record in the scene: its clicks as labelled markups in the module's colours, and its trace
as a UTF-8 text node that is saved with the scene."""

from __future__ import annotations

from typing import Any

import vtk

from IBISAgentLib.workflow import Marker

TRACE_NODE_NAME = "IBISAgent trace"
TRACE_SCHEMA_ATTRIBUTE = "IBISAgent.schema"
TEXT_SCALE = 2.5


def marker_node_name(source: str, positive: bool) -> str:
    """ASCII node names (they become file names inside a saved bundle); the labels carry the sign."""
    return f"IBISAgent {source} {'positive' if positive else 'negative'}"


def store_trace(scene: Any, text: str) -> Any:
    """The trace JSON as the text node "IBISAgent trace" (one per scene, replaced each time)."""
    node = scene.GetFirstNodeByName(TRACE_NODE_NAME)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTextNode", TRACE_NODE_NAME)
        node.SetAttribute(TRACE_SCHEMA_ATTRIBUTE, "ibisagent-trace")
    node.SetText(text, vtk.VTK_ENCODING_UTF_8)
    return node


class MRMLRecord:
    """The driver's RecordPort: one locked fiducial node per (who, polarity), positions set in world
    coordinates (right even if someone moves the node under a transform)."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.nodes: dict[tuple[str, bool], Any] = {}
        self._shown: dict[tuple[str, bool], list[tuple[str, tuple[float, float, float]]]] = {}

    def show_markers(self, markers: list[Marker]) -> None:
        for marker in markers:
            self._node(marker)
        for key, node in self.nodes.items():
            wanted = [(m.label, m.ras) for m in markers if (m.source, m.positive) == key]
            if self._shown.get(key) == wanted:
                continue
            node.RemoveAllControlPoints()
            for label, ras in wanted:
                index = node.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0), label)
                node.SetNthControlPointPositionWorld(index, *ras)
            self._shown[key] = wanted

    def store_trace(self, text: str) -> None:
        store_trace(self.scene, text)

    def _node(self, marker: Marker) -> Any:
        key = (marker.source, marker.positive)
        node = self.nodes.get(key)
        if node is not None and node.GetScene() is self.scene:
            return node
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", marker_node_name(*key))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(*marker.color)
        display.SetColor(*marker.color)
        display.SetTextScale(TEXT_SCALE)
        node.SetLocked(True)
        self.nodes[key], self._shown[key] = node, []
        return node
