"""IBISAgent for 3D Slicer: a thin adapter between Slicer's scene and IBISAgentLib's InteractionController.

Everything that decides or computes lives in IBISAgentLib; this file turns widgets and markups into
controller calls and controller events into segments, markups and text. Model work runs off the GUI
thread; its results arrive through the controller's queue, drained by a QTimer on the main thread (which
also lends the worker the GIL: see WORKER_TIME_S).
"""

import logging
import os
import queue
from urllib.parse import urlparse

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SETTINGS = "IBISAgent/"
VIEW_NAMES = ("Red", "Yellow", "Green")
POLL_MS = 50
# Slicer's main thread keeps Python's GIL while it sits in the Qt event loop (it never releases it after
# Py_InitializeFromConfig, Base/QTCore/qSlicerCorePythonManager.cxx), so the controller's worker thread
# runs only while the main thread waits in Python: each poll lends it up to this long (less when the
# operation ends sooner). The GUI handles its own events between polls.
WORKER_TIME_S = 0.04
EFFECT_NAME = "IBISAgent"  # the Segment Editor effect in SegmentEditorIBISAgent/, which all writes go through
LOCAL_MODULES = ("torch", "transformers", "qwen_vl_utils", "sam2", "hydra", "iopath")
# What a local run needs besides Slicer's own packages (numpy, SimpleITK and requests are never replaced).
LOCAL_REQUIREMENTS = ("transformers>=5,<6", "qwen-vl-utils", "hydra-core", "iopath", "huggingface_hub", "scipy", "tqdm")
SAM2_REQUIREMENT = "sam2==1.1.0"


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


class SegmentTarget:
    """Where a session's results go, fixed when it starts: changing the selectors later cannot redirect them."""

    def __init__(self, segmentationNode, segmentId, volumeNode):
        self.segmentationNode, self.segmentId, self.volumeNode = segmentationNode, segmentId, volumeNode


class IBISAgentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IBISAgent.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IBISAgentLogic()
        self.controller = None
        self.controllerKey = None
        self.target = None
        self.pendingAfterOpen = None
        self.placing = None  # True / False while a positive / negative correction is being placed

        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.stepButton.connect("clicked(bool)", self.onStep)
        self.ui.continueButton.connect("clicked(bool)", self.onContinue)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.positiveClickButton.connect("toggled(bool)", lambda on: self.onPlace(True, on))
        self.ui.negativeClickButton.connect("toggled(bool)", lambda on: self.onPlace(False, on))
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.exportTraceButton.connect("clicked(bool)", self.onExportTrace)
        self.ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        self.ui.backendSelector.connect("currentIndexChanged(int)", self.onBackendChanged)

        # Checked against Slicer's source: no Slicer shortcut uses Ctrl+Alt+P or Ctrl+Alt+N.
        self.shortcuts = []
        for keys, positive in (("Ctrl+Alt+P", True), ("Ctrl+Alt+N", False)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow() or uiWidget)
            shortcut.connect("activated()", lambda positive=positive: self.onShortcut(positive))
            self.shortcuts.append(shortcut)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(
            slicer.app.applicationLogic().GetInteractionNode(),
            slicer.vtkMRMLInteractionNode.InteractionModeChangedEvent,
            self.onInteractionModeChanged,
        )
        self.loadSettings()
        self.updateButtons()

    def cleanup(self):
        self.removeObservers()
        self.timer.stop()
        if self.controller is not None:
            self.controller.close()
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.logic.stopPlacing()

    def onSceneStartClose(self, caller, event):
        """The scene's nodes are going: end the session, and forget markups and placement nodes."""
        self.timer.stop()
        if self.controller is not None:
            self.controller.close()
        self.target, self.pendingAfterOpen = None, None
        self.ui.positiveClickButton.checked = self.ui.negativeClickButton.checked = False
        self.logic.forgetNodes()
        self.ui.reasoningText.plainText = ""
        self.ui.statusLabel.text = "Ready."
        self.updateButtons()

    def onInteractionModeChanged(self, caller, event):
        """Placement ended elsewhere (Escape, another tool): the correction buttons follow."""
        if self.placing is not None and caller.GetCurrentInteractionMode() != slicer.vtkMRMLInteractionNode.Place:
            self.ui.positiveClickButton.checked = self.ui.negativeClickButton.checked = False

    # -- settings ----------------------------------------------------------------------------------

    def loadSettings(self):
        settings = qt.QSettings()
        self.ui.backendSelector.currentIndex = int(settings.value(SETTINGS + "backend", 0))
        self.ui.serverUrlEdit.text = settings.value(SETTINGS + "serverUrl", "")
        self.ui.mllmEdit.text = settings.value(SETTINGS + "mllm", "")
        self.ui.sam2Edit.text = settings.value(SETTINGS + "sam2", "")
        self.onBackendChanged(self.ui.backendSelector.currentIndex)

    def saveSettings(self):
        """The choices, not the token: it stays in memory (the Segment Editor effect reads it from here)."""
        settings = qt.QSettings()
        settings.setValue(SETTINGS + "backend", self.ui.backendSelector.currentIndex)
        settings.setValue(SETTINGS + "serverUrl", self.ui.serverUrlEdit.text)
        settings.setValue(SETTINGS + "mllm", self.ui.mllmEdit.text)
        settings.setValue(SETTINGS + "sam2", self.ui.sam2Edit.text)

    def onBackendChanged(self, index):
        remote = index == 1
        for widget in (self.ui.serverUrlEdit, self.ui.tokenEdit, self.ui.testConnectionButton):
            widget.enabled = remote
        for widget in (self.ui.mllmEdit, self.ui.sam2Edit):
            widget.enabled = not remote

    # -- commands ----------------------------------------------------------------------------------

    def onRun(self):
        if self.controller is not None and self.controller.state.busy:
            self.controller.cancel()
            self.ui.statusLabel.text = "Cancelling…"
            return
        self.startSession("run")

    def onStep(self):
        if self.hasSession() and not self.controller.state.busy:
            self.command(self.controller.step)
        else:
            self.startSession("step")

    def onContinue(self):
        if not self.hasSession():
            slicer.util.errorDisplay("Run the agent first; Continue resumes its session.")
            return
        self.command(self.controller.run)

    def onUndo(self):
        if self.hasSession():
            self.command(self.controller.undo)

    def onPropagate(self):
        if not self.hasSession():
            slicer.util.errorDisplay("Segment a slice first: propagation grows that result through the volume.")
            return
        first, last = self.ui.rangeFirstSpinBox.value, self.ui.rangeLastSpinBox.value
        self.command(
            lambda: self.controller.propagate(
                first=first if last > first else None,
                last=last if last > first else None,
                stop_after_empty=self.ui.stopAfterEmptySpinBox.value,
                largest_component=self.ui.largestComponentCheckBox.checked,
            )
        )

    def onPlace(self, positive, on):
        other = self.ui.negativeClickButton if positive else self.ui.positiveClickButton
        if on:
            other.checked = False
            self.placing = positive
            self.logic.startPlacing(self.onPointPlaced)
        elif self.placing == positive:
            self.placing = None
            self.logic.stopPlacing()

    def onShortcut(self, positive):
        button = self.ui.positiveClickButton if positive else self.ui.negativeClickButton
        button.checked = not button.checked

    def onPointPlaced(self, ras):
        if not self.hasSession() or self.placing is None:
            slicer.util.errorDisplay("Start the agent on a slice first; corrections go into its session.")
            return
        positive = self.placing
        self.command(lambda: self.controller.click(ras, positive))

    def onExportTrace(self):
        if not self.hasSession():
            slicer.util.errorDisplay("There is no agent session to export yet.")
            return
        path = qt.QFileDialog.getSaveFileName(None, "Export IBISAgent trace", "trace.json", "JSON (*.json)")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(self.controller.trace_json())

    def onTestConnection(self):
        from IBISAgentLib.remote import RemoteBackend, RemoteError

        try:
            backend = RemoteBackend(self.ui.serverUrlEdit.text.strip(), token=self.ui.tokenEdit.text or None)
        except RemoteError as exc:
            slicer.util.errorDisplay(f"Cannot use the server: {exc}")
            return
        models = backend.server.get("models", {})
        slicer.util.infoDisplay(f"Connected. Model: {models.get('policy')}; tool: {models.get('tool')}.")
        self.saveSettings()

    # -- sessions ----------------------------------------------------------------------------------

    def hasSession(self):
        return self.controller is not None and self.controller.session is not None and self.target is not None

    def startSession(self, then):
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        instruction = self.ui.instructionEdit.text.strip()
        if volumeNode is None:
            slicer.util.errorDisplay("Select the volume to segment.")
            return
        if not instruction:
            slicer.util.errorDisplay("Type what to segment, for example 'segment the liver tumor'.")
            return
        if self.ui.segmentSelector.currentNode() is None or not self.ui.segmentSelector.currentSegmentID():
            slicer.util.errorDisplay("Select the segment that receives the result (or add an empty one).")
            return
        target = SegmentTarget(
            self.ui.segmentSelector.currentNode(), self.ui.segmentSelector.currentSegmentID(), volumeNode
        )
        try:
            self.logic.checkEditable(target)
            case = self.logic.caseFromView(volumeNode, VIEW_NAMES[self.ui.viewSelector.currentIndex])
            backendFactory = self.backendFactory()
        except (ValueError, RuntimeError) as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if backendFactory is None:
            return
        from IBISAgentLib.controller import InteractionController

        self.saveSettings()
        key = self.backendKey()
        if self.controller is None or key != self.controllerKey:
            if self.controller is not None:
                self.controller.close()
            self.controller = InteractionController(backendFactory)
            self.controllerKey = key
        self.target = target
        self.logic.clearMarkers()
        self.ui.reasoningText.plainText = ""
        self.ui.rangeFirstSpinBox.value, self.ui.rangeLastSpinBox.value = 0, case.geometry.count - 1
        self.pendingAfterOpen = then
        segment = self.logic.segmentArray(target)
        maxTurns = self.ui.maxTurnsSpinBox.value
        self.command(lambda: self.controller.open(case, instruction, max_turns=maxTurns, segment=segment))

    def backendKey(self):
        """What the backend depends on: a new one is built when any of it changes."""
        ui = self.ui
        return (
            ui.backendSelector.currentIndex,
            ui.serverUrlEdit.text,
            ui.tokenEdit.text,
            ui.mllmEdit.text,
            ui.sam2Edit.text,
        )

    def backendFactory(self):
        """A callable that builds the chosen backend (run by the controller off the GUI thread), or None."""
        return self.logic.backendFactory(
            remote=self.ui.backendSelector.currentIndex == 1,
            url=self.ui.serverUrlEdit.text.strip(),
            token=self.ui.tokenEdit.text or None,
            mllm=self.ui.mllmEdit.text.strip() or None,
            sam2=self.ui.sam2Edit.text.strip() or None,
        )

    def command(self, call):
        """Run a controller command, keeping the target segment as it is so a failure or cancel can restore it."""
        from IBISAgentLib.controller import ControllerBusy

        try:
            self.logic.snapshotSegment(self.target)
            call()
        except (ControllerBusy, ValueError) as exc:
            self.pendingAfterOpen = None
            slicer.util.errorDisplay(str(exc))
            return
        self.timer.start()
        self.updateButtons()

    # -- events (main thread) ----------------------------------------------------------------------

    def onPoll(self):
        if self.controller is None:
            self.timer.stop()
            return
        self.logic.showDownloads()
        events = self.controller.poll(wait=WORKER_TIME_S)
        for event in events:
            try:
                self.applyEvent(event)
            except Exception as exc:  # a failure here must reach the user, and must not stop the other events
                logging.exception("IBISAgent: applying a %s event failed", event.kind)
                slicer.util.errorDisplay(f"IBISAgent could not apply the result ({event.kind}): {exc}")
        state = self.controller.state
        self.logic.showMarkers(state.markers)
        self.ui.reasoningText.plainText = "\n".join(state.log)
        self.ui.statusLabel.text = (
            "Working…" if state.busy else f"Stopped: {state.stop_reason}" if state.stop_reason else "Ready."
        )
        if not state.busy and not self.pendingAfterOpen:
            self.timer.stop()
        self.updateButtons()
        if any(e.kind == "idle" for e in events) and self.hasSession() and not state.busy:
            self.logic.storeTraceOf(self.controller)

    def applyEvent(self, event):
        if event.kind in ("opened", "idle"):
            self.logic.closeDownloads()
        if event.plane is not None or event.mask is not None:
            updated = self.logic.segmentAfter(self.target, self.controller, event)
            if updated is not None:
                self.logic.writeSegment(self.target, updated)
        elif event.kind == "revert":
            self.logic.restoreSegment(self.target)
        elif event.kind == "error":
            slicer.util.errorDisplay(f"IBISAgent: {event.message}")
        elif event.kind == "progress":
            done, total = event.progress
            self.ui.propagationProgressBar.maximum = total
            self.ui.propagationProgressBar.value = done
        elif event.kind == "idle" and self.pendingAfterOpen:
            then, self.pendingAfterOpen = self.pendingAfterOpen, None
            if self.controller.session is not None:
                self.command(self.controller.run if then == "run" else self.controller.step)

    def updateButtons(self):
        busy = self.controller is not None and self.controller.state.busy
        self.ui.runButton.text = "Cancel" if busy else "Run"
        for button in (self.ui.stepButton, self.ui.continueButton, self.ui.undoButton, self.ui.propagateButton):
            button.enabled = not busy


class IBISAgentLogic(ScriptedLoadableModuleLogic):
    """MRML side effects only: segments, markups, the stored trace, installs and consent."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.markupNodes = {}
        self.shownMarkers = {}
        self.placementNode = None
        self.placementObserver = None
        self.snapshot = None
        self.downloads = queue.Queue()
        self.downloadDialog = None

    # -- volume ------------------------------------------------------------------------------------

    def caseFromView(self, volumeNode, viewName):
        """The volume as IBISAgentLib sees it, on the slice the view shows, windowed as the view shows it."""
        import numpy as np
        import sitkUtils

        from IBISAgentLib.geometry import SliceGeometry
        from IBISAgentLib.volume_case import VolumeCase
        from IBISAgentLib.windowing import Window

        sliceWidget = slicer.app.layoutManager().sliceWidget(viewName)
        if sliceWidget is None:
            raise ValueError(f"The {viewName} view is not in the current layout: choose a view that is shown.")
        sliceNode = sliceWidget.mrmlSliceNode()
        orientation = sliceNode.GetOrientation().lower()
        if orientation not in ("axial", "coronal", "sagittal"):
            raise ValueError(f"The {viewName} view is {orientation}: set it to Axial, Coronal or Sagittal.")
        image = sitkUtils.PullVolumeFromSlicer(volumeNode)
        sliceToRas = sliceNode.GetSliceToRAS()
        center = np.array([sliceToRas.GetElement(i, 3) for i in range(3)])
        try:
            geometry = SliceGeometry.of(image, orientation).through(center)
        except ValueError:
            raise ValueError(f"The {viewName} view does not show the volume: move it onto the volume first.") from None
        display = volumeNode.GetDisplayNode()
        window = Window(display.GetLevel(), display.GetWindow(), "as displayed") if display else None
        return VolumeCase.of(image, f"{orientation}:{geometry.index}", window)

    # -- segments ----------------------------------------------------------------------------------

    def segmentArray(self, target):
        """The target segment's voxels, (k, j, i) on the volume's grid."""
        return slicer.util.arrayFromSegmentBinaryLabelmap(
            target.segmentationNode, target.segmentId, target.volumeNode
        ).astype(bool)

    def checkEditable(self, target):
        """Raises ValueError when the segmentation is not stored as a binary labelmap, the form written here."""
        labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        stored = target.segmentationNode.GetSegmentation().GetSourceRepresentationName()
        if stored != labelmap:
            raise ValueError(
                f"The segmentation is stored as '{stored}'. IBISAgent edits binary labelmaps: select it in the "
                "Segment Editor (which offers to convert it), or choose another segmentation."
            )

    def segmentAfter(self, target, controller, event):
        """The target segment once a mask event is applied to it as it is now; None when nothing changes."""
        import numpy as np

        current = self.segmentArray(target)
        updated = controller.segment_after(event, current)
        return None if np.array_equal(updated, current) else updated

    def snapshotSegment(self, target):
        """Keep the target segment as it is, so a failed or cancelled operation can put it back."""
        self.snapshot = None if target is None else self.segmentArray(target)

    def restoreSegment(self, target):
        if self.snapshot is not None:
            self.writeSegment(target, self.snapshot, restore=True)

    def writeSegment(self, target, mask, restore=False):
        """The whole target segment becomes ``mask``, through the Segment Editor module's own editor: its
        editable-area and intensity masking apply and each write is a step of the undo history the user
        sees there. Other segments are never modified. A restore puts the saved voxels back unmasked."""
        editor = self.segmentEditor()
        editor.setSegmentationNode(target.segmentationNode)
        editor.setSourceVolumeNode(target.volumeNode)
        editor.setCurrentSegmentID(target.segmentId)
        effect = editor.effectByName(EFFECT_NAME)
        if effect is None:
            raise RuntimeError("The IBISAgent Segment Editor effect is not registered; restart Slicer.")
        effect.self().applyMask(mask, target.segmentationNode, target.segmentId, target.volumeNode, restore)

    def segmentEditor(self):
        """The Segment Editor module's editor widget (created on first use), with its parameter node set."""
        segmentEditorModule = slicer.modules.segmenteditor.widgetRepresentation().self()
        segmentEditorModule.selectParameterNode()  # unset after a scene close until the module is entered
        return segmentEditorModule.editor

    # -- markups -----------------------------------------------------------------------------------

    def showMarkers(self, markers):
        from IBISAgentLib.controller import COLORS

        for key, color in COLORS.items():
            node = self.markupNodes.get(key)
            wanted = [(m.label, tuple(m.ras)) for m in markers if (m.source, m.positive) == key]
            if node is None and not wanted:
                continue
            if node is None:
                node = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLMarkupsFiducialNode", f"IBISAgent {key[0]} {'+' if key[1] else '−'}"
                )
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor(color)
                node.GetDisplayNode().SetColor(color)
                node.GetDisplayNode().SetTextScale(2.5)
                node.SetLocked(True)
                self.markupNodes[key] = node
                self.keepPlacementActive()  # a new markups node becomes the active place node
            if self.shownMarkers.get(key) == wanted:
                continue
            node.RemoveAllControlPoints()
            for label, ras in wanted:
                node.AddControlPoint(*ras, label)
            self.shownMarkers[key] = wanted

    def clearMarkers(self):
        for node in self.markupNodes.values():
            node.RemoveAllControlPoints()
        self.shownMarkers = {}

    def forgetNodes(self):
        """The scene is closing: its nodes are going, so drop every reference to them."""
        self.markupNodes, self.shownMarkers = {}, {}
        self.placementNode = self.placementObserver = None
        self.snapshot = None

    def startPlacing(self, callback):
        self.stopPlacing()
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "IBISAgent correction")
        node.CreateDefaultDisplayNodes()

        def placed(caller, event):
            count = caller.GetNumberOfControlPoints()
            if count:
                ras = tuple(caller.GetNthControlPointPositionWorld(count - 1))
                caller.RemoveAllControlPoints()
                callback(ras)

        self.placementObserver = node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, placed)
        self.placementNode = node
        self.keepPlacementActive()
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(1)
        interactionNode.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.Place)

    def keepPlacementActive(self):
        if self.placementNode is not None:
            selectionNode = slicer.app.applicationLogic().GetSelectionNode()
            selectionNode.SetReferenceActivePlaceNodeID(self.placementNode.GetID())

    def stopPlacing(self):
        if self.placementNode is not None:
            node, self.placementNode = self.placementNode, None
            node.RemoveObserver(self.placementObserver)
            slicer.mrmlScene.RemoveNode(node)
            interactionNode = slicer.app.applicationLogic().GetInteractionNode()
            interactionNode.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.ViewTransform)

    # -- the record --------------------------------------------------------------------------------

    def storeTraceOf(self, controller):
        """Store the session's trace once an operation has ended; a server that is gone gets a dialog."""
        from IBISAgentLib.remote import RemoteError

        try:
            self.storeTrace(controller.trace_json())
        except RemoteError as exc:
            slicer.util.errorDisplay(f"IBISAgent could not read the session's trace: {exc}")

    def storeTrace(self, text):
        """The trace (reasoning, clicks, answers) as a UTF-8 text node, saved with the scene."""
        node = slicer.mrmlScene.GetFirstNodeByName("IBISAgent trace")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTextNode", "IBISAgent trace")
            node.SetAttribute("IBISAgent.schema", "ibisagent-trace")
        node.SetText(text, vtk.VTK_ENCODING_UTF_8)

    # -- backends, installs and consent ------------------------------------------------------------

    def backendFactory(self, remote, url=None, token=None, mllm=None, sam2=None):
        """A callable that builds a backend on the controller's worker thread; None when the user declined
        the install or the upload. Raises ValueError for settings that cannot work."""
        if remote:
            if not url:
                raise ValueError("Enter the IBISAgent server URL, or choose 'This computer'.")
            if not self.consentToUpload(url):
                return None
            from IBISAgentLib.remote import RemoteBackend

            return lambda: RemoteBackend(url, token=token)
        if not self.ensureLocalDependencies():
            return None

        progress = self.downloadProgressClass()

        def local():
            from IBISAgentLib.backends import LocalBackend
            from IBISAgentLib.loading import load_models
            from IBISAgentLib.weights import mllm_spec, sam2_spec

            policies, tool = load_models(mllm_spec(mllm), sam2_spec(sam2), tqdm_class=progress)
            return LocalBackend(policies, tool)

        return local

    def downloadProgressClass(self):
        """A tqdm class that reports weight downloads (made on the worker thread) to ``self.downloads``."""
        from tqdm.auto import tqdm

        sink = self.downloads

        class DownloadProgress(tqdm):
            def update(self, n=1):
                super().update(n)
                sink.put((self.desc or "model weights", self.n, self.total or 0, self.unit))

        return DownloadProgress

    def showDownloads(self):
        """Main thread: show the latest download progress in a progress dialog."""
        latest = None
        while not self.downloads.empty():
            latest = self.downloads.get_nowait()
        if latest is None:
            return
        name, done, total, unit = latest
        if self.downloadDialog is None:
            self.downloadDialog = slicer.util.createProgressDialog(windowTitle="IBISAgent: downloading model weights")
        self.downloadDialog.maximum = max(total, 1)
        self.downloadDialog.value = min(done, self.downloadDialog.maximum)
        if unit == "B":
            self.downloadDialog.labelText = f"{name}: {done / 2**20:.0f} of {total / 2**20:.0f} MiB"
        else:
            self.downloadDialog.labelText = f"{name}: {done} of {total or '?'} {unit}"

    def closeDownloads(self):
        """The models are loaded (or loading failed): no download is running any more."""
        self.showDownloads()
        if self.downloadDialog is not None:
            self.downloadDialog.close()
            self.downloadDialog = None

    def backendFactoryFromSettings(self):
        """The backend chosen in the module's "Models and server" panel, for the Segment Editor effect. The
        token is the one typed in the module (never stored on disk), else IBISAGENT_TOKEN."""
        settings = qt.QSettings()
        token = None
        widget = slicer.modules.ibisagent.widgetRepresentation().self()
        if widget is not None and getattr(widget, "ui", None) is not None:
            token = widget.ui.tokenEdit.text or None
        return self.backendFactory(
            remote=int(settings.value(SETTINGS + "backend", 0)) == 1,
            url=settings.value(SETTINGS + "serverUrl", "").strip(),
            token=token or os.environ.get("IBISAGENT_TOKEN") or None,
            mllm=settings.value(SETTINGS + "mllm", "").strip() or None,
            sam2=settings.value(SETTINGS + "sam2", "").strip() or None,
        )

    def ensureLocalDependencies(self):
        """Installs what a local run needs after one confirmation; False when the user declines or it fails."""
        import importlib.util

        missing = [name for name in LOCAL_MODULES if importlib.util.find_spec(name) is None]
        if not missing:
            return True
        needTorch = "torch" in missing
        listing = ("PyTorch (through the PyTorch extension), " if needTorch else "") + ", ".join(
            (*LOCAL_REQUIREMENTS, SAM2_REQUIREMENT)
        )
        if not slicer.util.confirmOkCancelDisplay(
            f"Running IBISAgent on this computer needs: {listing}.\nInstall them now? (a few minutes; Slicer's own "
            "numpy, SimpleITK and requests are kept)",
            "IBISAgent: install dependencies",
        ):
            return False
        try:
            if needTorch:
                import PyTorchUtils

                PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
            # A list, so that no path is split or unescaped by the shell-style parsing of a single string.
            slicer.util.pip_install([*LOCAL_REQUIREMENTS, "-c", self.keepSlicerPackages()])
            os.environ["SAM2_BUILD_CUDA"] = "0"
            slicer.util.pip_install(["--no-build-isolation", "--no-deps", SAM2_REQUIREMENT])
        except Exception as exc:  # PyTorchUtils and pip raise several kinds; all end in the same dialog
            logging.exception("IBISAgent: installing dependencies failed")
            slicer.util.errorDisplay(
                f"IBISAgent could not install what it needs to run on this computer: {exc}\n\nCheck the network "
                "connection and try again (details in the Python console), or choose a server instead."
            )
            return False
        return True

    def keepSlicerPackages(self):
        """A pip constraints file pinning the packages Slicer ships, so installs never replace them."""
        from importlib.metadata import PackageNotFoundError, version

        path = os.path.join(slicer.app.temporaryPath, "ibisagent-constraints.txt")
        pins = []
        for package in ("numpy", "SimpleITK", "requests"):
            try:
                pins.append(f"{package}=={version(package)}")
            except PackageNotFoundError:
                continue
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(pins) + "\n")
        return path

    def consentToUpload(self, url):
        """Asks once per server before images leave this computer for a non-local host."""
        host = urlparse(url).hostname or ""
        if host in ("localhost", "127.0.0.1", "::1"):
            return True
        settings = qt.QSettings()
        key = SETTINGS + "consent/" + host
        if settings.value(key, "") == "yes":
            return True
        if not slicer.util.confirmOkCancelDisplay(
            f"IBISAgent will send the selected volume and your instruction to the server {host}. Make sure this is "
            "allowed for these images. Continue?",
            "IBISAgent: send images to a server",
        ):
            return False
        settings.setValue(key, "yes")
        return True


class IBISAgentTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test with the tiny random-weight models and replayed model outputs."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        import importlib.util

        missing = [name for name in LOCAL_MODULES if importlib.util.find_spec(name) is None]
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

        from IBISAgentLib.backends import LocalBackend
        from IBISAgentLib.controller import InteractionController
        from IBISAgentLib.loading import load_models
        from IBISAgentLib.tiny_models import build_tiny_models

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
        volumeNode = SampleData.downloadSample("MRHead")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("target", "target")
        otherId = segmentationNode.GetSegmentation().AddEmptySegment("other", "other")
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        logic = IBISAgentLogic()
        case = logic.caseFromView(volumeNode, "Red")
        geometry = case.geometry
        target = SegmentTarget(segmentationNode, segmentId, volumeNode)

        # The target already holds voxels on another slice; the other segment covers the agent's whole slice.
        before = np.zeros(case.windowed.shape, np.uint8)
        geometry.at((geometry.index + 5) % geometry.count).insert(before, np.ones((geometry.height, geometry.width)))
        slicer.util.updateSegmentBinaryLabelmapFromArray(before, segmentationNode, segmentId, volumeNode)
        other = np.zeros(case.windowed.shape, np.uint8)
        geometry.insert(other, np.ones((geometry.height, geometry.width)))
        slicer.util.updateSegmentBinaryLabelmapFromArray(other, segmentationNode, otherId, volumeNode)

        self.delayDisplay("Running the agent")
        policies, tool = load_models(f"replay:{replay}", str(medsam2), "cpu")
        controller = InteractionController(LocalBackend(policies, tool, device="cpu"))
        controller.open(case, "segment the brain", segment=logic.segmentArray(target))
        controller.wait()
        logic.snapshotSegment(target)
        controller.run()
        finished = [e for e in controller.wait() if e.kind == "finished"][-1]
        self.assertTrue(finished.plane.any())
        result = logic.segmentAfter(target, controller, finished)
        logic.writeSegment(target, result)
        written = logic.segmentArray(target)
        self.assertTrue(np.array_equal(geometry.extract(written), finished.plane))
        self.assertTrue(np.array_equal(written & before.astype(bool), before.astype(bool)))  # kept elsewhere
        self.assertTrue(np.array_equal(logic.segmentArray(SegmentTarget(segmentationNode, otherId, volumeNode)), other))

        self.assertIsNone(logic.segmentAfter(target, controller, finished))  # applied: nothing left to write

        logic.restoreSegment(target)
        self.assertTrue(np.array_equal(logic.segmentArray(target), before.astype(bool)))
        logic.writeSegment(target, result)
        logic.segmentEditor().undo()  # the write is a step of the Segment Editor's own undo history
        self.assertTrue(np.array_equal(logic.segmentArray(target), before.astype(bool)))
        logic.writeSegment(target, result)

        self.delayDisplay("Correcting and undoing")
        ras = tuple(geometry.ijk_to_ras(geometry.pixel_to_ijk(10, 10)))
        controller.click(ras, positive=False)
        controller.wait()
        self.assertEqual(controller.state.markers[-1].label, "2−")
        logic.showMarkers(controller.state.markers)
        userMarkers = logic.markupNodes[("user", False)]
        self.assertEqual(userMarkers.GetNthControlPointLabel(0), "2−")
        controller.undo()
        controller.wait()
        self.assertEqual(len(controller.state.markers), 1)
        logic.showMarkers(controller.state.markers)
        self.assertEqual(userMarkers.GetNumberOfControlPoints(), 0)

        self.delayDisplay("Propagating")
        controller.propagate(first=geometry.index - 2, last=geometry.index + 2, stop_after_empty=0)
        propagated = [e for e in controller.wait() if e.kind == "propagated"]
        self.assertEqual(len(propagated), 1)
        result = logic.segmentAfter(target, controller, propagated[0])
        logic.writeSegment(target, result)
        self.assertTrue(np.array_equal(logic.segmentArray(target), result))
        self.assertTrue(np.array_equal(logic.segmentArray(target) & before.astype(bool), before.astype(bool)))

        self.delayDisplay("Saving and reloading the scene keeps the trace")
        logic.storeTrace(controller.trace_json())
        scenePath = os.path.join(folder, "scene.mrb")
        self.assertTrue(slicer.util.saveScene(scenePath))
        slicer.mrmlScene.Clear()
        logic.forgetNodes()
        slicer.util.loadScene(scenePath)
        stored = slicer.mrmlScene.GetFirstNodeByName("IBISAgent trace")
        self.assertEqual(json.loads(stored.GetText())["instruction"], "segment the brain")
        logging.info("IBISAgent self-test passed")
        self.delayDisplay("Test passed")
