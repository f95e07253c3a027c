"""IBISAgent for 3D Slicer: the module's widgets over the one workflow driver (IBISAgentLib.workflow).

The widget builds its UI, reads its selectors, forwards presses and clicks to the driver, and renders the
driver's state; the scene side is IBISAgentMRML's, the Slicer-application helpers IBISAgentDesktop's.
"""

import logging
import os

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

VIEW_NAMES = ("Red", "Yellow", "Green")


class IBISAgent(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IBISAgent"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["IBISAgent developers"]
        self.parent.helpText = (
            "Type what to segment. A multimodal model reasons about the slice and clicks; MedSAM2 segments. "
            "Correct with your own clicks, undo any step, and propagate the result through the volume."
        )
        self.parent.acknowledgementText = (
            "IBISAgent (CVPR 2026) by its authors; MedSAM2 by Ma et al.; SAM 2 by Meta. This module runs their "
            "released weights through IBISAgentLib."
        )


class IBISAgentLogic(ScriptedLoadableModuleLogic):
    """The logic is the shared workflow driver (IBISAgentDesktop.hub); nothing is kept here."""


class IBISAgentWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        from IBISAgentDesktop import settings
        from IBISAgentDesktop.hub import hub

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IBISAgent.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.hub = hub()
        self.hub.views.append(self)
        self.placing = None  # True / False while a positive / negative correction is being placed
        self.shownSlice = ""

        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.findButton.connect("clicked(bool)", lambda: self.hub.start(self.request("run", find=True)))
        self.ui.stepButton.connect("clicked(bool)", self.onStep)
        self.ui.continueButton.connect("clicked(bool)", lambda: self.hub.command(self.hub.driver.run))
        self.ui.undoButton.connect("clicked(bool)", lambda: self.hub.command(self.hub.driver.undo))
        self.ui.positiveClickButton.connect("toggled(bool)", lambda on: self.onPlace(True, on))
        self.ui.negativeClickButton.connect("toggled(bool)", lambda on: self.onPlace(False, on))
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.exportTraceButton.connect("clicked(bool)", self.onExportTrace)
        self.ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        self.ui.backendSelector.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.ui.tokenEdit.connect("textChanged(QString)", settings.set_token)

        # Checked against Slicer's source: no Slicer shortcut uses Ctrl+Alt+P or Ctrl+Alt+N.
        self.shortcuts = []
        for keys, positive in (("Ctrl+Alt+P", True), ("Ctrl+Alt+N", False)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow() or uiWidget)
            shortcut.connect("activated()", lambda positive=positive: self.onShortcut(positive))
            self.shortcuts.append(shortcut)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.interactionObserver = interaction.AddObserver(
            slicer.vtkMRMLInteractionNode.InteractionModeChangedEvent, self.onInteractionModeChanged
        )
        from IBISAgentLib.tools import VARIANTS

        self.ui.sam2VariantSelector.addItem("tell from the file", "")
        for variant in VARIANTS:
            self.ui.sam2VariantSelector.addItem(f"{variant.title} ({variant.image_size} px)", variant.name)
        for title, value in (("automatic", "auto"), ("float32", "fp32"), ("bfloat16", "bf16")):
            self.ui.precisionSelector.addItem(title, value)
        remote, fields = settings.stored_fields()
        self.ui.backendSelector.currentIndex = 1 if remote else 0
        self.ui.serverUrlEdit.text, self.ui.mllmEdit.text = fields["server"], fields["mllm"]
        self.ui.sam2Edit.text, self.ui.propagatorEdit.text = fields["sam2"], fields["propagator"]
        self.ui.sam2VariantSelector.currentIndex = max(0, self.ui.sam2VariantSelector.findData(fields["sam2_variant"]))
        self.ui.precisionSelector.currentIndex = max(0, self.ui.precisionSelector.findData(fields["precision"]))
        self.onBackendChanged(self.ui.backendSelector.currentIndex)
        self.hub.render()

    def cleanup(self):
        self.hub.views.remove(self)
        self.hub.placement.stop()
        slicer.app.applicationLogic().GetInteractionNode().RemoveObserver(self.interactionObserver)
        for shortcut in self.shortcuts:
            shortcut.setParent(None)

    # -- settings ----------------------------------------------------------------------------------

    def onBackendChanged(self, index):
        remote = index == 1
        for widget in (self.ui.serverUrlEdit, self.ui.tokenEdit, self.ui.testConnectionButton):
            widget.enabled = remote
        local = (self.ui.mllmEdit, self.ui.sam2Edit, self.ui.sam2VariantSelector, self.ui.propagatorEdit,
                 self.ui.precisionSelector)  # fmt: skip
        for widget in local:
            widget.enabled = not remote

    def saveSettings(self):
        from IBISAgentDesktop import settings

        ui = self.ui
        fields = {
            "server": ui.serverUrlEdit.text,
            "mllm": ui.mllmEdit.text,
            "sam2": ui.sam2Edit.text,
            "sam2_variant": ui.sam2VariantSelector.currentData or "",
            "propagator": ui.propagatorEdit.text,
            "precision": ui.precisionSelector.currentData or "auto",
        }
        settings.save(ui.backendSelector.currentIndex == 1, fields)

    def onTestConnection(self):
        from IBISAgentLib.remote.client import RemoteBackend, RemoteError

        try:
            backend = RemoteBackend(self.ui.serverUrlEdit.text.strip(), token=self.ui.tokenEdit.text or None)
        except RemoteError as exc:
            slicer.util.errorDisplay(f"Cannot use the server: {exc}")
            return
        models = backend.server.get("models", {})
        slicer.util.infoDisplay(f"Connected. Model: {models.get('policy')}; tool: {models.get('tool')}.")
        self.saveSettings()

    # -- commands ----------------------------------------------------------------------------------

    def onRun(self):
        self.hub.run_or_cancel(self.request("run"))

    def onStep(self):
        self.hub.step(self.request("step"))

    def request(self, then, find=False):
        """The session the selectors ask for (the settings are saved first: the driver builds from them)."""
        self.saveSettings()
        return self.hub.request(
            self.ui.inputVolumeSelector.currentNode(),
            self.ui.segmentSelector.currentNode(),
            self.ui.segmentSelector.currentSegmentID(),
            VIEW_NAMES[self.ui.viewSelector.currentIndex],
            self.ui.instructionEdit.text,
            self.ui.maxTurnsSpinBox.value,
            then,
            find,
        )

    def onPropagate(self):
        from IBISAgentLib.agent.volume_agent import DEFAULT_CHECK_BUDGET
        from IBISAgentLib.tools import PropagationOptions

        options = PropagationOptions(
            self.ui.rangeFirstSpinBox.value,
            self.ui.rangeLastSpinBox.value,
            self.ui.stopAfterEmptySpinBox.value,
            self.ui.largestComponentCheckBox.checked,
        )
        budget = DEFAULT_CHECK_BUDGET if self.ui.checkCheckBox.checked else None
        self.hub.command(lambda: self.hub.driver.propagate(options, budget))

    def onPlace(self, positive, on):
        other = self.ui.negativeClickButton if positive else self.ui.positiveClickButton
        if on:
            other.checked = False
            self.placing = positive
            self.hub.placement.start(self.onPointPlaced)
        elif self.placing == positive:
            self.placing = None
            self.hub.placement.stop()

    def onShortcut(self, positive):
        button = self.ui.positiveClickButton if positive else self.ui.negativeClickButton
        button.checked = not button.checked

    def onInteractionModeChanged(self, caller, event):
        """Placement ended elsewhere (Escape, another tool): the correction buttons follow."""
        if self.placing is not None and caller.GetCurrentInteractionMode() != slicer.vtkMRMLInteractionNode.Place:
            self.ui.positiveClickButton.checked = self.ui.negativeClickButton.checked = False

    def onPointPlaced(self, ras):
        positive = self.placing
        if positive is not None:
            self.hub.command(lambda: self.hub.driver.click(ras, positive))

    def onExportTrace(self):
        if not self.hub.driver.has_session:
            slicer.util.errorDisplay("There is no agent session to export yet.")
            return
        path = qt.QFileDialog.getSaveFileName(None, "Export IBISAgent trace", "trace.json", "JSON (*.json)")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(self.hub.driver.trace_json())

    # -- rendering the driver's state --------------------------------------------------------------

    def render(self, driver, view):
        """The session's view model (IBISAgentMRML.SessionView) in the module's widgets."""
        self.ui.reasoningText.plainText = "\n".join(view.log)
        self.ui.statusLabel.text = view.status
        self.ui.runButton.text = "Cancel" if view.busy else "Run"
        for button in (self.ui.findButton, self.ui.stepButton, self.ui.continueButton, self.ui.undoButton,
                       self.ui.propagateButton):  # fmt: skip
            button.enabled = not view.busy
        if view.progress is not None:
            done, total = view.progress
            self.ui.propagationProgressBar.maximum, self.ui.propagationProgressBar.value = total, done
        if view.slice_where != self.shownSlice:  # a new session: the whole volume by default
            self.shownSlice = view.slice_where
            if view.slice_count:
                self.ui.rangeFirstSpinBox.value, self.ui.rangeLastSpinBox.value = 0, view.slice_count - 1
        if not view.has_session:
            self.ui.positiveClickButton.checked = self.ui.negativeClickButton.checked = False


class IBISAgentTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test of the Qt half: the tiny random-weight models, replayed outputs, the module's own
    widgets, and writes through the Segment Editor (its undo history)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from IBISAgentDesktop.dependencies import missing_local_modules

        missing = missing_local_modules()
        if missing:
            # Where the local dependencies were never installed (an extension build machine), nothing can run.
            logging.warning("IBISAgent self-test not run: %s not installed (run the module once)", ", ".join(missing))
            return
        self.setUp()
        self.test_RunCorrectUndoPropagateSave()

    def test_RunCorrectUndoPropagateSave(self):
        import json
        import tempfile

        import numpy as np
        import SampleData
        from IBISAgentDesktop.editor import EffectEditor
        from IBISAgentDesktop.hub import hub

        from IBISAgentLib.agent.backends import LocalBackend
        from IBISAgentLib.models.loading import load_models
        from IBISAgentLib.models.tiny_models import build_tiny_models
        from IBISAgentMRML import segment_array

        self.delayDisplay("Building tiny models")
        folder = tempfile.mkdtemp()
        _, medsam2 = build_tiny_models(folder)
        replay = os.path.join(folder, "outputs.json")
        with open(replay, "w", encoding="utf-8") as handle:
            json.dump(
                [
                    "<think>here</think><action>Positive Point (0.5000, 0.5000)</action>",
                    "<think>done</think><action>Terminate</action><answer>Done.</answer>",
                ],
                handle,
            )
        volumeNode = SampleData.downloadSample("MRHead")  # a sagittal acquisition: the axial view is its k-j plane
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("target", "target")
        otherId = segmentationNode.GetSegmentation().AddEmptySegment("other", "other")
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        widget = slicer.modules.ibisagent.widgetRepresentation().self()
        widget.ui.inputVolumeSelector.setCurrentNode(volumeNode)
        widget.ui.segmentSelector.setCurrentNode(segmentationNode)
        widget.ui.segmentSelector.setCurrentSegmentID(segmentId)
        widget.ui.viewSelector.currentIndex = 0
        widget.ui.instructionEdit.text = "segment the brain"
        policies, tool = load_models(f"replay:{replay}", str(medsam2), "cpu")
        backend = LocalBackend(policies, tool, device="cpu")
        desktop = hub()
        desktop.driver.build_backend = lambda choice: backend
        other = np.zeros(tuple(reversed(volumeNode.GetImageData().GetDimensions())), bool)
        other[:, 100:140, 100:140] = True
        EffectEditor().write(segmentationNode, otherId, volumeNode, other, False)

        self.delayDisplay("Running the agent from the module's Run button")
        widget.ui.runButton.click()
        desktop.driver.wait()
        desktop.poll()
        driver = desktop.driver
        geometry = driver.case.geometry
        written = segment_array(segmentationNode, segmentId, volumeNode)
        self.assertTrue(written.any())
        self.assertTrue(np.array_equal(geometry.extract(written), driver.session.mask))
        self.assertTrue(np.array_equal(segment_array(segmentationNode, otherId, volumeNode), other))
        self.assertEqual(widget.ui.statusLabel.text, "Stopped: terminate — Done.")
        self.assertIn("here", widget.ui.reasoningText.plainText)

        self.delayDisplay("The Segment Editor's Undo takes the agent's write back")
        EffectEditor().undo()
        self.assertFalse(segment_array(segmentationNode, segmentId, volumeNode).any())

        self.delayDisplay("Correcting by placing a point, and undoing")
        ras = tuple(geometry.ijk_to_ras(geometry.pixel_to_ijk(10, 10)))
        widget.placing = False
        widget.onPointPlaced(ras)
        driver.wait()
        desktop.poll()
        self.assertEqual(driver.state.markers[-1].label, "2−")
        widget.ui.undoButton.click()
        driver.wait()
        desktop.poll()
        self.assertEqual(len(driver.state.markers), 1)

        self.delayDisplay("Propagating")
        widget.ui.rangeFirstSpinBox.value, widget.ui.rangeLastSpinBox.value = geometry.index - 2, geometry.index + 2
        widget.ui.stopAfterEmptySpinBox.value = 0
        widget.ui.propagateButton.click()
        driver.wait()
        desktop.poll()
        grown = segment_array(segmentationNode, segmentId, volumeNode)
        self.assertTrue(all(geometry.at(k).extract(grown).any() for k in range(geometry.index - 2, geometry.index + 3)))

        self.delayDisplay("Propagating with the check, then Find")
        widget.ui.checkCheckBox.checked = True
        widget.ui.propagateButton.click()
        driver.wait()
        desktop.poll()
        self.assertTrue(driver.state.slices)
        self.assertIsNotNone(json.loads(driver.trace_json())["checks"])
        widget.ui.findButton.click()
        driver.wait()
        desktop.poll()
        self.assertTrue(any(line.startswith("looked at slice") for line in driver.state.log))
        self.assertIsNotNone(driver.session)

        self.delayDisplay("Saving and reloading the scene keeps the trace")
        scenePath = os.path.join(folder, "scene.mrb")
        self.assertTrue(slicer.util.saveScene(scenePath))
        slicer.mrmlScene.Clear()
        self.assertIsNone(driver.session)  # closing the scene ended the session
        slicer.util.loadScene(scenePath)
        stored = slicer.mrmlScene.GetFirstNodeByName("IBISAgent trace")
        self.assertEqual(json.loads(stored.GetText())["instruction"], "segment the brain")
        logging.info("IBISAgent self-test passed")
        self.delayDisplay("Test passed")
