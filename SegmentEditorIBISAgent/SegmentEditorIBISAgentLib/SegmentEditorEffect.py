"""The IBISAgent flow inside the Segment Editor: type, run, correct by clicking on the slice, undo,
propagate. Every write goes through this effect, so the Segment Editor's masking settings and undo
history apply; the IBISAgent module writes through it too."""

import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

POLL_MS = 100


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "IBISAgent"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.controller = None
        self.controllerKey = None
        self.pendingAfterOpen = None
        self.logic = None
        self.timer = None
        self.snapshot = None

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
            "MedSAM2 segments into the selected segment (masking settings apply).<br>"
            "<b>Left-click</b> on the agent's slice: add a positive correction. <b>Shift + left-click</b>: a negative "
            "one. Models and server are chosen in the IBISAgent module.</html>"
        )

    # -- options panel -----------------------------------------------------------------------------

    def setupOptionsFrame(self):
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
        self.reasoningText = qt.QPlainTextEdit()
        self.reasoningText.readOnly = True
        self.scriptedEffect.addOptionsWidget(self.reasoningText)
        self.runButton.connect("clicked()", self.onRun)
        self.stepButton.connect("clicked()", self.onStep)
        self.undoButton.connect("clicked()", self.onUndo)
        self.propagateButton.connect("clicked()", self.onPropagate)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def deactivate(self):
        if self.controller is not None and self.controller.state.busy:
            self.controller.cancel()

    # -- writing (also used by the IBISAgent module) -----------------------------------------------

    def applyMask(self, mask, bypassMasking=False):
        """Set the selected segment to ``mask`` ((k, j, i) on the source volume grid), undoably."""
        sourceNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        labelNode = slicer.modules.volumes.logic().CreateAndAddLabelVolume(sourceNode, "__IBISAgent__")
        try:
            slicer.util.updateVolumeFromArray(labelNode, mask.astype("uint8"))
            labelmap = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelNode)
            self.scriptedEffect.saveStateForUndo()
            self.scriptedEffect.modifySelectedSegmentByLabelmap(
                labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet, bypassMasking
            )
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)

    # -- commands ----------------------------------------------------------------------------------

    def moduleLogic(self):
        if self.logic is None:
            import IBISAgent

            self.logic = IBISAgent.IBISAgentLogic()
        return self.logic

    def onRun(self):
        if self.controller is not None and self.controller.state.busy:
            self.controller.cancel()
            return
        self.start("run")

    def onStep(self):
        if self.controller is not None and self.controller.session is not None:
            self.command(self.controller.step)
        else:
            self.start("step")

    def onUndo(self):
        if self.controller is not None and self.controller.session is not None:
            self.command(self.controller.undo)

    def onPropagate(self):
        if self.controller is None or self.controller.session is None:
            slicer.util.errorDisplay("Segment a slice first: propagation grows that result through the volume.")
            return
        self.command(self.controller.propagate)

    def start(self, then):
        from IBISAgentLib.controller import InteractionController

        volumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        instruction = self.instructionEdit.text.strip()
        if volumeNode is None or not instruction:
            slicer.util.errorDisplay("Select a source volume and type what to segment.")
            return
        logic = self.moduleLogic()
        try:
            case = logic.caseFromView(volumeNode, self.viewSelector.currentText)
            factory = logic.backendFactoryFromSettings()
        except (ValueError, RuntimeError) as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if factory is None:
            return
        # One controller (and so one loaded model or server connection) per choice of backend.
        key = tuple(qt.QSettings().value("IBISAgent/" + name, "") for name in ("backend", "serverUrl", "mllm", "sam2"))
        if self.controller is None or key != self.controllerKey:
            if self.controller is not None:
                self.controller.close()
            self.controller, self.controllerKey = InteractionController(factory), key
        self.pendingAfterOpen = then
        self.command(lambda: self.controller.open(case, instruction))

    def command(self, call):
        """Run a controller command, keeping the segment as it was so a failure or cancel can restore it."""
        from IBISAgentLib.controller import ControllerBusy

        self.snapshot = self.selectedSegmentArray()
        try:
            call()
        except (ControllerBusy, ValueError) as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.timer.start()
        self.runButton.text = "Cancel"

    def selectedSegmentArray(self):
        parameters = self.scriptedEffect.parameterSetNode()
        return slicer.util.arrayFromSegmentBinaryLabelmap(
            parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID(), parameters.GetSourceVolumeNode()
        ).copy()

    def onPoll(self):
        if self.controller is None:
            return
        for event in self.controller.poll():
            if event.mask is not None and event.kind in ("step", "undone", "finished", "propagated"):
                self.applyMask(event.mask)
            elif event.kind == "revert":
                self.applyMask(self.snapshot, bypassMasking=True)
            elif event.kind == "error":
                slicer.util.errorDisplay(f"IBISAgent: {event.message}")
            elif event.kind == "idle" and self.pendingAfterOpen:
                then, self.pendingAfterOpen = self.pendingAfterOpen, None
                if self.controller.session is not None:
                    self.command(self.controller.run if then == "run" else self.controller.step)
        state = self.controller.state
        self.moduleLogic().showMarkers(state.markers)
        self.reasoningText.plainText = "\n".join(state.log)
        if not state.busy and not self.pendingAfterOpen:
            self.timer.stop()
            self.runButton.text = "Run"
            if self.controller.session is not None:
                self.moduleLogic().storeTraceOf(self.controller)

    # -- corrections by clicking in the slice views ------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget" or eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if self.controller is None or self.controller.session is None:
            return False
        if callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
            return False
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        positive = not callerInteractor.GetShiftKey()
        self.command(lambda: self.controller.click(tuple(ras), positive))
        return True
