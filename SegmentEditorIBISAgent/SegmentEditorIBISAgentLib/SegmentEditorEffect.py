"""The IBISAgent flow inside the Segment Editor: type, run, correct by clicking on the slice, undo,
propagate. Every write goes through this effect, so the Segment Editor's editable area, intensity range
and undo history apply; the IBISAgent module writes through it too. Other segments are never modified."""

import logging
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
        self.controller = None
        self.controllerKey = None
        self.pendingAfterOpen = None
        self.logic = None
        self.timer = None
        self.target = None

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
        import IBISAgent

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
        self.timer.setInterval(IBISAgent.POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def deactivate(self):
        if self.controller is not None and self.controller.state.busy:
            self.controller.cancel()

    # -- writing (also used by the IBISAgent module) -----------------------------------------------

    def applyMask(self, mask, segmentationNode, segmentId, volumeNode, bypassMasking=False):
        """Set a segment to ``mask`` ((k, j, i) on ``volumeNode``'s grid), as one undoable step.

        The editor's "modify other segments" setting is set to none for the write: the result goes into
        this segment only, and a restore can put everything back by restoring this segment alone.
        """
        labelNode = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volumeNode, "__IBISAgent__")
        parameters = self.scriptedEffect.parameterSetNode()
        overwrite = parameters.GetOverwriteMode()
        try:
            slicer.util.updateVolumeFromArray(labelNode, mask.astype("uint8"))
            labelmap = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelNode)
            # With masking on, the editor needs the modifier on the segmentation's own grid.
            reference = self.scriptedEffect.defaultModifierLabelmap()
            if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(reference, labelmap):
                resampled = slicer.vtkOrientedImageData()
                slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                    labelmap, reference, resampled, False, True
                )
                labelmap = resampled
            parameters.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
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
        import IBISAgent
        from IBISAgentLib.controller import InteractionController

        parameters = self.scriptedEffect.parameterSetNode()
        volumeNode = parameters.GetSourceVolumeNode()
        instruction = self.instructionEdit.text.strip()
        if volumeNode is None or not instruction or not parameters.GetSelectedSegmentID():
            slicer.util.errorDisplay("Select a source volume and a segment, and type what to segment.")
            return
        target = IBISAgent.SegmentTarget(
            parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID(), volumeNode
        )
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
        self.target, self.pendingAfterOpen = target, then
        segment = logic.segmentArray(target)
        self.command(lambda: self.controller.open(case, instruction, segment=segment))

    def command(self, call):
        """Run a controller command, keeping the segment as it was so a failure or cancel can restore it."""
        from IBISAgentLib.controller import ControllerBusy

        try:
            self.moduleLogic().snapshotSegment(self.target)
            call()
        except (ControllerBusy, ValueError) as exc:
            self.pendingAfterOpen = None
            slicer.util.errorDisplay(str(exc))
            return
        self.timer.start()
        self.runButton.text = "Cancel"

    def onPoll(self):
        import IBISAgent

        if self.controller is None:
            self.timer.stop()
            return
        logic = self.moduleLogic()
        logic.showDownloads()
        for event in self.controller.poll(wait=IBISAgent.WORKER_TIME_S):
            try:
                self.applyEvent(event)
            except Exception as exc:  # a failure here must reach the user, and must not stop the other events
                logging.exception("IBISAgent: applying a %s event failed", event.kind)
                slicer.util.errorDisplay(f"IBISAgent could not apply the result ({event.kind}): {exc}")
        state = self.controller.state
        self.moduleLogic().showMarkers(state.markers)
        self.reasoningText.plainText = "\n".join(state.log)
        if not state.busy and not self.pendingAfterOpen:
            self.timer.stop()
            self.runButton.text = "Run"
            if self.controller.session is not None:
                self.moduleLogic().storeTraceOf(self.controller)

    def applyEvent(self, event):
        target, logic = self.target, self.moduleLogic()
        if event.kind in ("opened", "idle"):
            logic.closeDownloads()
        if target.segmentationNode.GetScene() is None:
            return  # the scene was closed (which deactivated this effect and cancelled the run): nothing to write
        if event.plane is not None or event.mask is not None:
            updated = logic.segmentAfter(target, self.controller, event)
            if updated is not None:
                self.applyMask(updated, target.segmentationNode, target.segmentId, target.volumeNode)
        elif event.kind == "revert" and logic.snapshot is not None:
            self.applyMask(logic.snapshot, target.segmentationNode, target.segmentId, target.volumeNode, True)
        elif event.kind == "error":
            slicer.util.errorDisplay(f"IBISAgent: {event.message}")
        elif event.kind == "idle" and self.pendingAfterOpen:
            then, self.pendingAfterOpen = self.pendingAfterOpen, None
            if self.controller.session is not None:
                self.command(self.controller.run if then == "run" else self.controller.step)

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
