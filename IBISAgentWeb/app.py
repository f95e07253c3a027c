"""The app: trame-slicer's scene and remote-rendered views, the panel, and the bridge to the workflow driver."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from trame.app import TrameApp
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import client, html
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui, create_vertical_view_gutter_ui
from trame_slicer.core import LayoutManager
from trame_slicer.rca_view import register_rca_factories
from wslink.websocket import LinkProtocol

from IBISAgentLib.imaging.limits import DEFAULT_LIMITS, ImageLimits
from IBISAgentLib.pacs import PacsSettings
from IBISAgentLib.workflow import BackendChoice

from .bridge import DriverBridge
from .clicks import CorrectionClicks
from .hand_tools import HandTools
from .pacs_browser import PacsBrowser
from .panel import DEFAULTS, build_panel, build_view_controls
from .saving import save_outputs
from .scene import WebScene, render_slices_plainly
from .views import DEFAULT_LAYOUT, LAYOUTS, ViewCaptions, WindowControl, caption_overlay, layouts

# trame-rca renders a changed view at its interactive JPEG quality, then renders it again at its still quality
# (90) a moment later. Views here change by edits, rarely by dragging: one render at the still quality.
STILL_QUALITY = 90
SHOW_BUSY_S = 0.05  # long enough for a state change to leave for the page before blocking work starts


class IBISAgentWebApp(TrameApp):
    def __init__(
        self,
        server: Any = None,
        *,
        choice: BackendChoice,
        out_dir: Path,
        max_turns: int = 20,
        limits: ImageLimits = DEFAULT_LIMITS,
        pacs: PacsSettings | None = None,
    ) -> None:
        super().__init__(server, client_type="vue3")
        self.out_dir = Path(out_dir)
        self.scene = WebScene(limits)
        self.state.update(DEFAULTS)
        self.state.trame__title = "IBISAgent"
        register_rca_factories(
            self.scene.app.view_manager,
            self.server,
            slice_view_ui_f=_slice_view_ui,
            three_d_view_ui_f=_three_d_view_ui,
            interactive_quality=STILL_QUALITY,
        )
        self.layout_manager = LayoutManager(self.scene.scene, self.scene.app.view_manager, self.server)
        self.layout_manager.register_layout_dict(layouts())
        self.layout_manager.set_layout(DEFAULT_LAYOUT)
        self.state.ia_layout = DEFAULT_LAYOUT
        self.state.change("ia_layout")(self._on_layout)
        self.bridge = DriverBridge(self.server, self.scene, choice, max_turns=max_turns)
        self.captions = ViewCaptions(self.state, self.scene.app.view_manager.get_slice_views(), None)
        self.window = WindowControl(self.state)
        self.tools = HandTools(self.state, self.bridge)
        self.pacs = PacsBrowser(self.state, pacs, self.scene, self.bridge.notify)
        self.scene.before_replace = self.bridge.close  # only once the new volume is known to be good
        self.scene.after_replace = self._on_volume
        self.state.change("ia_mode")(self._on_correction_mode)
        self._on_correction_mode(None)
        self.clicks = CorrectionClicks(
            self.scene.app.view_manager.get_slice_views(), self.bridge.on_click, lambda: bool(self.state.ia_mode)
        )
        self._saved: dict[str, Path] = {}
        self.server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(OpenTabs(self.state)))
        self.server.controller.on_client_connected.add(self._on_client_connected)
        self.server.trigger("ia_download")(self.on_download)
        self._build_ui()

    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, theme="dark") as self.ui:
            self.ui.title.set_text("IBISAgent")
            with self.ui.toolbar:
                build_view_controls(self)
            self.ui.drawer.width = 400
            with self.ui.drawer:
                build_panel(self, self.bridge)
            with self.ui.content:
                client.Style("html { overflow-y: auto; }")
                self.layout_manager.initialize_layout_grid(self.ui)

    # -- lifecycle -----------------------------------------------------------------------------------

    def _on_client_connected(self, *_args, **_kwargs) -> None:
        self.scene.on_page_connected()
        self.bridge.refresh_segments()
        self.bridge.render()
        self.tools.refresh()

    def _on_volume(self, volume: Any) -> None:
        self.pacs.forget()
        self.bridge.history.forget()
        self.tools.tools_off()
        self.captions.set_volume(volume)
        self.window.set_volume(volume)

    def _on_layout(self, ia_layout: str, **_: Any) -> None:
        if ia_layout in LAYOUTS:
            self.layout_manager.set_layout(ia_layout)
            self.scene.fit_views()

    def _on_correction_mode(self, ia_mode: str | None, **_: Any) -> None:
        """A left drag in a slice view sets the window/level (Slicer's own widget, in its AdjustWindowLevel
        mouse mode), except while Add/Remove point is on: then a left click is a correction."""
        interaction = self.scene.app.app_logic.GetInteractionNode()
        interaction.SetCurrentInteractionMode(interaction.ViewTransform if ia_mode else interaction.AdjustWindowLevel)

    def on_reset_views(self) -> None:
        self.scene.fit_views()

    # -- actions the panel calls -----------------------------------------------------------------------

    def on_upload(self, files: list[dict]) -> None:
        if self.bridge.driver.state.busy:
            self.bridge.notify("Wait for the agent or press Cancel before opening another volume.")
            return
        if self.state.ia_pacs_working:
            self.bridge.notify("Wait for the PACS to finish before opening another volume.")
            return
        message = self.scene.open_uploads(list(files or []))
        self._after_open(message)

    async def on_pacs_search(self) -> None:
        await self.pacs.search()

    async def on_pacs_open(self) -> None:
        if self.bridge.driver.state.busy:
            self.bridge.notify("Wait for the agent or press Cancel before opening another volume.")
            return
        self._after_open(await self.pacs.open(lambda: self.bridge.driver.state.busy))

    async def on_pacs_save(self) -> None:
        target = self._to_save()
        if target is not None:
            await self.pacs.store(*target, self.bridge.history.hand_edited())

    def _after_open(self, message: str | None) -> None:
        if message is None:
            self.state.ia_segment = ""
            self.state.ia_downloads, self.state.ia_saved = [], ""
        self.bridge.notify(message or "")
        self.bridge.refresh_segments()
        self.bridge.render()

    def on_add_segment(self) -> None:
        name = str(self.state.ia_new_segment or "").strip()
        if not name:
            self.bridge.notify("Type a name for the new segment.")
            return
        if self.scene.volume is None:
            self.bridge.notify("Open a volume first.")
            return
        self.state.ia_segment = self.scene.add_segment(name)
        self.state.ia_new_segment = ""
        self.bridge.notify("")
        self.bridge.refresh_segments()
        self.tools.refresh()

    async def on_save(self) -> None:
        with self.state:
            self.state.ia_saving = True
        await asyncio.sleep(SHOW_BUSY_S)  # the page shows the button busy before the writing holds this thread
        try:
            self._save()
        finally:
            with self.state:
                self.state.ia_saving = False

    def _save(self) -> None:
        target = self._to_save()
        if target is None:
            return
        segmentation, segment_id, trace = target
        try:
            paths, voxels = save_outputs(
                self.out_dir, self.scene.scene, self.scene.volume, segmentation, segment_id, trace,
                self.scene.source_grid,
            )  # fmt: skip
        except Exception as exc:  # a full disk, a folder we cannot write: say so, keep working
            self.bridge.notify(f"Could not save: {exc}")
            return
        self._saved = {p.name: p for p in paths}
        with self.state:
            self.state.ia_downloads = [{"name": p.name} for p in paths]
            self.state.ia_saved = (
                f"Saved {len(paths)} files to {self.out_dir.resolve()} ({voxels} voxels in the segment)."
            )
            self.state.ia_message = ""

    def _to_save(self) -> tuple[Any, str, str | None] | None:
        """What Save and Save to PACS write: the session's target, else the picked segment, with the session's
        trace (None, said, while the agent works or when there is no segment)."""
        driver = self.bridge.driver
        if driver.state.busy:
            self.bridge.notify("Wait for the agent or press Cancel before saving.")
            return None
        trace = driver.trace_json() if driver.has_session else None
        target = driver.target if driver.has_session else None
        if target is not None:
            return target.segmentation_node, target.segment_id, trace
        resolved = self.scene.resolve_segment(self.state.ia_segment)
        if resolved is None:
            self.bridge.notify("There is no segment to save yet: run the agent or pick a target segment.")
            return None
        return (*resolved, trace)

    def on_download(self, name: str) -> Any:
        path = self._saved.get(name)
        if path is None or not path.is_file():
            self.bridge.notify(f"{name} is no longer there: press Save again.")
            return None
        return self.server.protocol.addAttachment(path.read_bytes())


class OpenTabs(LinkProtocol):
    """Counts the pages connected now, by their websockets (``ia_clients``, behind the shared-scene warning). The
    page's own "exited" message comes from its beforeunload handler, which a closed or crashed tab may never
    run; a closed socket is noticed at once."""

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.state = state
        self.open: set[str] = set()

    def onConnect(self, request: Any, client_id: str) -> None:
        self.open.add(client_id)
        self._publish()

    def onClose(self, client_id: str) -> None:
        self.open.discard(client_id)
        self._publish()

    def _publish(self) -> None:
        with self.state:
            self.state.ia_clients = len(self.open)


def _view_tag(view: Any) -> None:
    """A hidden tag naming the view, so pages and tests can find a view's image (class "ia-view-Red")."""
    html.Span(classes=f"ia-view-tag ia-view-{view.get_singleton_tag()}", style="display: none")


def _slice_view_ui(server: Any, view_id: str, view: Any) -> None:
    render_slices_plainly(view)  # trame-slicer calls this as it makes each slice view
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    caption_overlay(view)
    _view_tag(view)


def _three_d_view_ui(server: Any, view_id: str, view: Any) -> None:
    create_vertical_view_gutter_ui(server, view_id, view)
    _view_tag(view)
