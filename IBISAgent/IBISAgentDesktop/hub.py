"""The one agent session of this Slicer session (IBISAgentMRML's SessionController over the workflow driver),
shared by the module and its Segment Editor effect (both render the same view model), and the Qt timer that
polls it on the main thread."""

import logging

import qt
import slicer

from IBISAgentLib.workflow import DriverBusy, Failed, Idle, Opened, WorkflowDriver
from IBISAgentMRML import AdapterError, MRMLSegment, SessionController, StartRequest

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
        self.session = SessionController(slicer.mrmlScene, self.driver, self.target)
        self.placement = CorrectionPlacement()
        self.views = []  # objects with render(driver, view)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.poll)
        self.sceneObserver = slicer.mrmlScene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self.onSceneClose)

    @staticmethod
    def target(segmentationNode, segmentId, volumeNode):
        """The driver writes through the IBISAgent effect: the Segment Editor's masking and undo history apply."""
        return MRMLSegment(segmentationNode, segmentId, volumeNode, EffectEditor())

    def request(self, volumeNode, segmentationNode, segmentId, viewName, instruction, maxTurns, then, find=False):
        """What the module's selectors say, as a start request (the view the agent works on, its slice node)."""
        sliceWidget = slicer.app.layoutManager().sliceWidget(viewName)
        return StartRequest(
            volume=volumeNode,
            slice_node=sliceWidget.mrmlSliceNode() if sliceWidget is not None else None,
            view_name=viewName,
            segment=(segmentationNode, segmentId) if segmentationNode is not None and segmentId else None,
            instruction=instruction,
            max_turns=maxTurns,
            then=then,
            find=find,
        )

    def start(self, request):
        """A new session as ``request`` says (Find always opens one)."""
        self.command(lambda: self._start(request))

    def run_or_cancel(self, request):
        """Run, which turns into Cancel while the agent works."""
        self.command(lambda: self.session.run_or_cancel(lambda: self._start(request)))

    def step(self, request):
        """One more turn of the open session when it is the one asked for; else a new session's first."""
        self.command(lambda: self.session.step_or_start(request, lambda: self._start(request)))

    def _start(self, request):
        choice = settings.load()
        if dependencies.ready_for(choice):  # the local dependencies, installed on consent
            self.session.start(request, choice)

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

    def poll(self):
        self.downloads.show()
        events = self.session.poll(wait=WORKER_TIME_S)
        for event in events:
            if isinstance(event, (Opened, Idle)):
                self.downloads.close()
            if isinstance(event, Failed):
                logging.warning("IBISAgent: %s", event.message)
                slicer.util.errorDisplay(f"IBISAgent: {event.message}")
        self.placement.keep_active()
        if not self.driver.state.busy:
            self.timer.stop()
        self.render()

    def render(self):
        shown = self.session.view()
        for view in list(self.views):
            view.render(self.driver, shown)

    def onSceneClose(self, caller, event):
        """The scene's nodes are going: end the session (nothing more is written) and forget placement."""
        self.timer.stop()
        self.session.close()  # cancelled at the next token; its late events are dropped
        self.placement.forget()
        self.render()


_hub = {}


def hub():
    """The hub of this Slicer session, made on first use."""
    if "instance" not in _hub:
        _hub["instance"] = DesktopHub()
    return _hub["instance"]
