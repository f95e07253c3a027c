"""Writes through the Segment Editor module's own editor and the IBISAgent effect.

Why not IBISAgentMRML's LogicEditor here: in Slicer 5.10 the Segment Editor widget keeps its
vtkSlicerSegmentEditorLogic private (qMRMLSegmentEditorWidget), so writes through another logic instance
would have their own undo history and the Segment Editor's Undo button would not take them back. Writing
through an effect of that editor joins the history the clinician sees. The effect is not activated (that
would reset the placement mode)."""

import slicer

EFFECT_NAME = "IBISAgent"


def segment_editor():
    """The Segment Editor module's editor widget (created on first use), with its parameter node set."""
    module = slicer.modules.segmenteditor.widgetRepresentation().self()
    module.selectParameterNode()  # unset after a scene close until the module is entered
    return module.editor


class EffectEditor:
    """IBISAgentMRML's SegmentEditor protocol, on desktop Slicer."""

    def write(self, segmentation_node, segment_id, volume_node, mask, bypass_masking):
        editor = segment_editor()
        editor.setSegmentationNode(segmentation_node)
        editor.setSourceVolumeNode(volume_node)
        editor.setCurrentSegmentID(segment_id)
        effect = editor.effectByName(EFFECT_NAME)
        if effect is None:
            raise RuntimeError("The IBISAgent Segment Editor effect is not registered: restart Slicer.")
        effect.self().applyMask(mask, segmentation_node, segment_id, volume_node, bypass_masking)

    def write_plane(self, segmentation_node, segment_id, volume_node, normal_axis, index, plane):
        """The whole segment with the plane replaced, through the effect (it has no plane-limited write yet)."""
        from IBISAgentMRML.segments import whole_with_plane

        whole = whole_with_plane(segmentation_node, segment_id, volume_node, normal_axis, index, plane)
        self.write(segmentation_node, segment_id, volume_node, whole, False)

    def undo(self):
        segment_editor().undo()
