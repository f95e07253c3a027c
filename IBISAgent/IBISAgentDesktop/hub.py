"""The one workflow driver of this Slicer session, shared by the module and its Segment Editor effect (both
render the same state), and the timer that polls it on the main thread."""

import logging

import qt
import slicer

from IBISAgentLib.workflow import DriverBusy, Failed, Idle, Opened, WorkflowDriver
from IBISAgentMRML import AdapterError, MRMLRecord, MRMLSegment, align_view, show_slice, volume_case

from . import dependencies, settings
from .downloads import DownloadDialog
from .editor import EffectEditor
from .placement import CorrectionPlacement

POLL_MS = 50
# Slicer's main thread keeps Python's GIL while it sits in the Qt event loop (it never releases it after
# Py_InitializeFromConfig, Base/QTCore/qSlicerCorePythonManager.cxx), so the driver's worker thread runs only
# while the main thread waits in Python: each poll lends it up to this long (less when the operation ends).
WORKER_TIME_S = 0.04


class DesktopHub:
    def __init__(self):
        self.downloads = DownloadDialog()
        self.driver = WorkflowDriver(lambda choice: choice.build(tqdm_class=self.downloads.tqdm_class()))
        self.placement = CorrectionPlacement()
        self.views = []  # objects with render(driver)
        self.viewName = None  # the slice view the session works on
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.poll)
        self.sceneObserver = slicer.mrmlScene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self.onSceneClose)

    def start(self, volumeNode, segmentationNode, segmentId, viewName, instruction, maxTurns, then, find=False):
        """Start a session on the slice ``viewName`` shows (the view is turned onto the volume's voxel plane
        when it shows a resampled one, so it shows exactly what the agent works on); with ``find``, on the slice
        of that axis the agent finds, which the view then moves to."""
        if volumeNode is None or segmentationNode is None or not segmentId:
            slicer.util.errorDisplay("Select the volume and the segment that receives the result.")
            return
        sliceWidget = slicer.app.layoutManager().sliceWidget(viewName)
        if sliceWidget is None:
            slicer.util.errorDisplay(f"The {viewName} view is not in the current layout: choose a view that is shown.")
            return
        choice = settings.load()
        if not dependencies.ready_for(choice):
            return

        def begin():
            sliceNode = sliceWidget.mrmlSliceNode()
            align_view(sliceNode, volumeNode)
            case, _ = volume_case(volumeNode, sliceNode)
            target = MRMLSegment(segmentationNode, segmentId, volumeNode, EffectEditor())
            record = MRMLRecord(slicer.mrmlScene)
            self.driver.start(case, instruction, target, record, choice, then=then, max_turns=maxTurns, find=find)
            self.viewName = viewName

        self.command(begin)

    def run_or_cancel(self, start):
        """Run, which turns into Cancel while the agent works; ``start("run")`` opens a new session and runs."""
        if self.driver.state.busy:
            self.driver.cancel()
        else:
            start("run")

    def step(self, start):
        """One more turn of the open session, or ``start("step")`` for a new session's first."""
        if self.driver.has_session:
            self.command(self.driver.step)
        else:
            start("step")

    def command(self, call):
        """Forward a command to the driver; a refusal is a dialog. Returns whether it was taken."""
        try:
            call()
        except (DriverBusy, AdapterError, ValueError, RuntimeError) as exc:
            slicer.util.errorDisplay(str(exc))
            return False
        self.timer.start()
        self.render()
        return True

    def showAgentSlice(self):
        """The agent's view shows the session's slice (after Find it is not the one the view was on)."""
        widget = slicer.app.layoutManager().sliceWidget(self.viewName) if self.viewName else None
        if widget is not None and self.driver.case is not None:
            show_slice(widget.mrmlSliceNode(), self.driver.case.geometry)

    def poll(self):
        self.downloads.show()
        events = self.driver.poll(wait=WORKER_TIME_S)
        for event in events:
            if isinstance(event, (Opened, Idle)):
                self.downloads.close()
            if isinstance(event, Opened):
                self.showAgentSlice()
            if isinstance(event, Failed):
                logging.warning("IBISAgent: %s", event.message)
                slicer.util.errorDisplay(f"IBISAgent: {event.message}")
        self.placement.keep_active()
        if not self.driver.state.busy:
            self.timer.stop()
        self.render()

    def render(self):
        for view in list(self.views):
            view.render(self.driver)

    def onSceneClose(self, caller, event):
        """The scene's nodes are going: end the session (nothing more is written) and forget placement."""
        self.timer.stop()
        self.driver.close(timeout=5.0)  # cancelled at the next token; its late events are dropped
        self.placement.forget()
        self.render()


_hub = {}


def hub():
    """The hub of this Slicer session, made on first use."""
    if "instance" not in _hub:
        _hub["instance"] = DesktopHub()
    return _hub["instance"]
