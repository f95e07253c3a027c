"""Hidden module that registers the IBISAgent Segment Editor effect when Slicer has started."""

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class SegmentEditorIBISAgent(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorIBISAgent"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "IBISAgent"]
        self.parent.contributors = ["IBISAgent developers"]
        self.parent.hidden = True
        self.parent.helpText = "Registers the IBISAgent effect of the Segment Editor."
        self.parent.acknowledgementText = "See the IBISAgent module."
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(os.path.dirname(__file__), self.__class__.__name__ + "Lib/SegmentEditorEffect.py")
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()
