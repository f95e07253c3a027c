"""The page's wrapper around IBISAgentMRML's session controller: commands forwarded (a refusal becomes a
message in the page), the session polled on the event-loop thread while it works, woken by each of its results
(model work runs on the driver's own worker thread; ``poll()`` applies its results to the scene here, on the
thread that owns VTK), its view model rendered into trame's state; and what only the page has: consent before
an image leaves for another machine, the missing-weights banner and the demo models."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from trame.app import asynchronous

from IBISAgentLib.agent.volume_agent import DEFAULT_CHECK_BUDGET
from IBISAgentLib.models.weights import DownloadProgress
from IBISAgentLib.remote.client import is_loopback
from IBISAgentLib.tools import PropagationOptions
from IBISAgentLib.workflow import BackendChoice, DriverBusy, Event, Failed, WorkflowDriver
from IBISAgentMRML import AdapterError, LogicEditor, SessionController, StartRequest, whole_number

from .editing import EditHistory
from .scene import VIEW_NAMES, WebScene

POLL_S = 0.5  # the poll loop wakes at each result from the worker; this is only its longest sleep
# A correction or an undo is usually over sooner: the panel shows it busy only if it is not, instead of
# flashing every control to busy and back (the page's repaint also took CPU from the model and the render).
QUICK_S = 0.3
REFUSALS = (DriverBusy, AdapterError, ValueError, RuntimeError)


class DriverBridge:
    def __init__(
        self,
        server: Any,
        scene: WebScene,
        choice: BackendChoice,
        max_turns: int = 20,
    ) -> None:
        self.server, self.state, self.scene, self.choice = server, server.state, scene, choice
        self.state.ia_max_turns = max_turns
        self._consented: set[str] = set()  # servers the user agreed to send images to, this process
        self._pending_start: str | None = None
        self.downloads = DownloadProgress()
        self.driver = WorkflowDriver(
            lambda chosen: chosen.build(tqdm_class=self.downloads.tqdm_class()), on_event=self._wake_from_worker
        )
        self.history = EditHistory(scene.app.segmentation_editor, self.driver)
        self.history.close_session = self.close
        self.session = SessionController(scene.scene, self.driver, self._target_port, self._new_segment)
        self.missing = choice.missing_weights()  # the cache only: the page says so at once, never after a timeout
        self.state.ia_weights_missing = _missing_line(self.missing)
        self.state.ia_models = choice.describe()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = asyncio.Event()
        self.editor: LogicEditor | None = None
        self._polling = False
        self._rendered_log = -1
        scene.scene.AddObserver(scene.scene.StartCloseEvent, lambda *_: self.close())

    # -- volume changes ------------------------------------------------------------------------------

    def close(self) -> None:
        """The volume (and with it the target and markers) is about to go: end the session first."""
        self.session.close()
        self.history.session_closed()
        self.render()

    def _target_port(self, node: Any, segment_id: str, volume: Any) -> Any:
        """The driver writes through a Segment Editor logic of the page's own, recorded in the page's history."""
        scene = self.scene.scene
        if self.editor is None or self.editor.editor_node.GetScene() is not scene:
            self.editor = LogicEditor(scene, self.scene.app.app_logic)
        self.scene.surfaces.show(node)
        return self.history.port(node, segment_id, volume, self.editor)

    def _new_segment(self, instruction: str) -> tuple[Any, str]:
        """No target chosen yet: a segment named after the instruction, chosen as the target."""
        self.state.ia_segment = self.scene.add_segment(instruction)
        self.refresh_segments()
        return self.scene.resolve_segment(self.state.ia_segment)

    # -- commands ------------------------------------------------------------------------------------

    def command(self, call: Callable[[], Any], quick: bool = False) -> bool:
        """Forward a command; a refusal (busy, bad input, no session) is a message in the page. A ``quick``
        command's busy state reaches the page only if it lasts QUICK_S."""
        try:
            call()
        except REFUSALS as exc:
            self.notify(str(exc) or exc.__class__.__name__)
            self.render()
            return False
        self.notify("")
        if quick:
            asyncio.get_running_loop().call_later(QUICK_S, self.render)
        else:
            self.render()
        self.ensure_polling()
        return True

    def on_run(self) -> None:
        self.command(lambda: self.session.run_or_cancel(lambda: self._start("run")))

    def on_step(self) -> None:
        self.command(lambda: self.session.step_or_start(self._request("step"), lambda: self._start("step")))

    def on_continue(self) -> None:
        self.command(self.driver.run)

    def on_undo(self) -> None:
        """The latest edit, whatever made it: the agent's step, a correction, a stroke, a propagation."""
        self.command(self.history.undo, quick=True)

    def after_undoable_change(self) -> None:
        """An edit or an undo changed the segmentation: an undone new segment may have been the session's."""
        target = self.driver.target
        if self.driver.has_session and not target.segmentation_node.GetSegmentation().GetSegment(target.segment_id):
            self.close()
        self.refresh_segments()
        if not self.scene.resolve_segment(self.state.ia_segment):
            with self.state:
                self.state.ia_segment = ""

    def on_cancel(self) -> None:
        self.driver.cancel()

    def on_propagate(self) -> None:
        def call() -> None:
            first = whole_number(self.state.ia_first, "first slice")
            last = whole_number(self.state.ia_last, "last slice")
            empty = whole_number(self.state.ia_stop_after_empty, "stop after empty slices")
            budget = DEFAULT_CHECK_BUDGET if self.state.ia_check else None
            self.driver.propagate(PropagationOptions(first, last, empty, bool(self.state.ia_largest)), budget)

        self.command(call)

    def on_find(self) -> None:
        self.start("run", find=True)

    def on_goto_slice(self, index: int) -> None:
        """A bar of the propagated-slice strip: the agent's view moves to that slice."""

        def call() -> None:
            shown = self.session.show_agent_slice(index)
            with self.state:
                self.state.ia_shown = f"(showing {shown})"

        self.command(call)

    def on_click(self, view_name: str, ras: tuple[float, float, float]) -> None:
        """A click on a slice view while Add/Remove point is on."""
        mode = self.state.ia_mode
        if mode not in ("add", "remove"):
            return
        agent_view = self.session.agent_view_name if self.driver.has_session else None
        if agent_view is not None and view_name != agent_view:
            self.notify(f"Corrections go on the {VIEW_NAMES[agent_view]} view, where the agent works.")
            self.render()
            return
        self.command(lambda: self.driver.click(tuple(float(v) for v in ras), mode == "add"), quick=True)

    def start(self, then: str, find: bool = False) -> None:
        self.command(lambda: self._start(then, find))

    def _start(self, then: str, find: bool = False) -> None:
        """A new session as the panel says; the page asks once per server before an image leaves this
        computer, and refuses at once when the models are missing."""
        host = urlsplit(self.choice.server).hostname if self.choice.remote else None
        if host and not is_loopback(host) and host not in self._consented:
            with self.state:
                self.state.ia_consent_host, self._pending_start = host, then
            return
        if self.state.ia_weights_missing:
            raise ValueError("The models are not on this computer: choose Download models or Use demo models above.")
        self.session.start(self._request(then, find), self.choice)
        self.history.session_started()

    def _request(self, then: str, find: bool = False) -> StartRequest:
        """What the panel says now: the volume, the agent's view, the Target segment, the instruction."""
        view_name = self.state.ia_view
        return StartRequest(
            volume=self.scene.volume,
            slice_node=self.scene.slice_node(view_name),
            view_name=str(view_name),
            segment=self.scene.resolve_segment(self.state.ia_segment),
            instruction=str(self.state.ia_instruction or ""),
            max_turns=self.state.ia_max_turns,
            then=then,
            find=find,
        )

    def on_consent_given(self) -> None:
        self._consented.add(self.state.ia_consent_host)
        then, self._pending_start = self._pending_start, None
        with self.state:
            self.state.ia_consent_host = ""
        self.start(then or "run")

    def on_consent_refused(self) -> None:
        self._pending_start = None
        with self.state:
            self.state.ia_consent_host = ""
        self.notify("Nothing was sent to the server.")

    def _recheck_weights(self) -> None:
        """After a failed run, missing weights (a download that could not happen) are offered again."""
        if self.missing:
            self.missing = self.choice.missing_weights()
            with self.state:
                self.state.ia_weights_missing = _missing_line(self.missing)

    def on_missing_details(self) -> None:
        with self.state:
            self.state.ia_details = "\n\n".join(self.missing)

    def on_download_models(self) -> None:
        """Run downloads the missing weights first (the status line shows the progress)."""
        with self.state:
            self.state.ia_weights_missing = ""
            self.state.ia_message = ""

    async def on_demo_models(self) -> None:
        """Tiny random-weight models instead of the missing ones, as ``ibisagent demo`` does: everything runs,
        nothing the agent does means anything, and the page says so while they are in use."""
        from IBISAgentLib.models.tiny_models import demo_models

        with self.state:
            self.state.ia_preparing = "Building the demo models (once, a few seconds)…"
        try:
            mllm, medsam2 = await asyncio.to_thread(demo_models)
        except Exception as exc:  # a cache folder we cannot write: say so, keep the page working
            self.notify(f"Could not build the demo models: {exc}")
            return
        finally:
            with self.state:
                self.state.ia_preparing = ""
        self.choice = BackendChoice(mllm=str(mllm), sam2=str(medsam2), device=self.choice.device)
        self.missing = []
        with self.state:
            self.state.ia_weights_missing = ""
            self.state.ia_demo = True
            self.state.ia_models = f"DEMO: tiny random-weight models ({mllm.parent}); their results are meaningless"
            self.state.ia_message = ""

    # -- polling and rendering -------------------------------------------------------------------------

    def ensure_polling(self) -> None:
        if not self._polling and self.driver.state.busy:
            self._polling = True
            self._loop = asyncio.get_running_loop()
            asynchronous.create_task(self._poll_loop())

    def _wake_from_worker(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._woken.set)

    async def _poll_loop(self) -> None:
        try:
            while True:
                events = self._poll_agent_view_first()
                failures = [e.message for e in events if isinstance(e, Failed)]
                if failures:
                    self.notify(failures[-1])
                    self._recheck_weights()
                if not self.driver.state.busy:
                    self.downloads.clear()
                    if not events:
                        self.render()
                    return
                if self.downloads.text:
                    self.render()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), POLL_S)
                self._woken.clear()
        finally:
            self._polling = False

    def _poll_agent_view_first(self) -> list[Event]:
        """Apply the driver's results; the agent's view shows them first, the other views and the panel follow
        (the page lays out and paints the panel on the same CPU, before the view's frame can be shown)."""
        agent_view = self.session.agent_view_name
        if agent_view is None or not self.driver.has_results:
            events = self.session.poll()
            self.history.record(events)
            if events:
                self.render()
            return events
        with self.scene.view_first(agent_view, then=self.render):
            events = self.session.poll()
            self.history.record(events)
            return events

    def notify(self, message: str) -> None:
        with self.state:
            self.state.ia_message = message

    def refresh_segments(self) -> None:
        with self.state:
            self.state.ia_segments = self.scene.segment_items()
            volume = self.scene.volume
            self.state.ia_volume_name = volume.GetName() if volume is not None else ""

    def render(self) -> None:
        """The session's view model into the page's state."""
        view = self.session.view(self.downloads.text)
        with self.state:
            self.state.ia_status, self.state.ia_busy = view.status, view.busy
            if len(view.log) != self._rendered_log or not view.log:
                self.state.ia_log = list(view.log)
                self._rendered_log = len(view.log)
            self.state.ia_markers = list(view.markers)
            done, total = view.progress or (0, 0)
            self.state.ia_progress = round(100 * done / max(total, 1))
            self.state.ia_progress_text = f"{done} of {total} slices" if view.progress else ""
            self.state.ia_has_session, self.state.ia_mask_area = view.has_session, view.mask_area
            if self.state.ia_slice_where != view.slice_where:  # a new session: the whole volume by default
                self.state.ia_slice_where = view.slice_where
                if view.slice_count:
                    self.state.ia_first, self.state.ia_last = 0, view.slice_count - 1
            largest = max((s["area"] for s in view.slices), default=0) or 1
            self.state.ia_slices = [
                {
                    "index": s["index"],
                    "area": s["area"],
                    "flags": s["flags"],
                    "height": round(100 * s["area"] / largest),
                }
                for s in view.slices
            ]


def _missing_line(missing: list[str]) -> str:
    if not missing:
        return ""
    names = ", ".join(m.split(" ", 1)[0] for m in missing)
    return f"The models are not on this computer ({names})."
