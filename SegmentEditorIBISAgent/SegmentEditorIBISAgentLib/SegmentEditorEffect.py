"""The IBISAgent flow inside the Segment Editor: type, run, correct by clicking on the slice, undo,
propagate. It renders the same session as the IBISAgent module (IBISAgentDesktop.hub), and every
write of the agent goes through this effect's applyMask, so the Segment Editor's editable area, intensity
range and undo history apply. Other segments are never modified."""

import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "IBISAgent"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Type what to segment and press Run: the IBISAgent model reasons about the slice and clicks, "
            "MedSAM2 segments into the selected segment (editable area and intensity range apply; other segments "
            "are never modified).<br>"
            "<b>Left-click</b> on the agent's slice: add a positive correction. <b>Shift + left-click</b>: a negative "
            "one. Models and server are chosen in the IBISAgent module.</html>"
        )

    # -- options panel -----------------------------------------------------------------------------

    def setupOptionsFrame(self):
        from IBISAgentDesktop.hub import hub

        self.hub = hub()
        self.instructionEdit = qt.QLineEdit()
        self.instructionEdit.placeholderText = "segment the liver tumor"
        self.scriptedEffect.addLabeledOptionsWidget("Instruction:", self.instructionEdit)
        self.viewSelector = qt.QComboBox()
        self.viewSelector.addItems(["Red", "Yellow", "Green"])
        self.scriptedEffect.addLabeledOptionsWidget("Slice view:", self.viewSelector)
        buttons = qt.QHBoxLayout()
        self.runButton = qt.QPushButton("Run")
        self.stepButton = qt.QPushButton("Step")
        self.undoButton = qt.QPushButton("Undo step")
        self.propagateButton = qt.QPushButton("Propagate")
        for button in (self.runButton, self.stepButton, self.undoButton, self.propagateButton):
            buttons.addWidget(button)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.statusLabel = qt.QLabel("Ready.")
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.reasoningText = qt.QPlainTextEdit()
        self.reasoningText.readOnly = True
        self.scriptedEffect.addOptionsWidget(self.reasoningText)
        self.runButton.connect("clicked()", self.onRun)
        self.stepButton.connect("clicked()", self.onStep)
        self.undoButton.connect("clicked()", lambda: self.hub.command(self.hub.driver.undo))
        self.propagateButton.connect("clicked()", lambda: self.hub.command(self.hub.driver.propagate))
        self.hub.views.append(self)

    def deactivate(self):
        if self.hub.driver.state.busy:
            self.hub.driver.cancel()

    # -- commands ----------------------------------------------------------------------------------

    def onRun(self):
        self.hub.run_or_cancel(self.request("run"))

    def onStep(self):
        self.hub.step(self.request("step"))

    def request(self, then):
        """The session this editor's selection asks for: its source volume, its selected segment."""
        parameters = self.scriptedEffect.parameterSetNode()
        return self.hub.request(
            parameters.GetSourceVolumeNode(),
            parameters.GetSegmentationNode(),
            parameters.GetSelectedSegmentID(),
            self.viewSelector.currentText,
            self.instructionEdit.text,
            20,
            then,
        )

    def render(self, driver, view):
        self.reasoningText.plainText = "\n".join(view.log)
        self.statusLabel.text = view.status
        self.runButton.text = "Cancel" if view.busy else "Run"

    # -- corrections by clicking in the slice views ------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget" or eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if not self.hub.driver.has_session:
            return False
        if callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
            return False
        ras = tuple(self.xyToRas(callerInteractor.GetEventPosition(), viewWidget))
        positive = not callerInteractor.GetShiftKey()
        self.hub.command(lambda: self.hub.driver.click(ras, positive))
        return True

    # -- writing (the module's writes come here too) ------------------------------------------------

    def applyMask(self, mask, segmentationNode, segmentId, volumeNode, bypassMasking=False):
        """Set a segment to ``mask`` ((k, j, i) on ``volumeNode``'s grid, both nodes' transforms honoured) as
        one undoable step. "Modify other segments" is off for the write, so only this segment changes and a
        restore puts everything back by restoring it alone. Slicer's bypassMasking skips the editable area
        but not the intensity range, so a bypassing write turns the range off for its duration too."""
        from IBISAgentMRML.segments import modifier_labelmap

        parameters = self.scriptedEffect.parameterSetNode()
        overwrite, intensity = parameters.GetOverwriteMode(), parameters.GetSourceVolumeIntensityMask()
        reference = self.scriptedEffect.defaultModifierLabelmap()
        labelmap = modifier_labelmap(segmentationNode, volumeNode, mask, reference)
        try:
            parameters.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
            if bypassMasking:
                parameters.SetSourceVolumeIntensityMask(False)
            self.scriptedEffect.saveStateForUndo()
            self.scriptedEffect.modifySegmentByLabelmap(
                segmentationNode,
                segmentId,
                labelmap,
                slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet,
                bypassMasking,
            )
        finally:
            parameters.SetOverwriteMode(overwrite)
            parameters.SetSourceVolumeIntensityMask(intensity)
