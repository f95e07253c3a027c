"""The order the web app's views show a result in, on trame-slicer's real views over Slicer's core (rendered
offscreen, each render seen by its VTK render window): the view the clinician clicked in at once, the panel,
then the other slice views, and the 3D view last, so that no slice view's frame waits behind the 3D render."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'ibisagent[slicer]')")

from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

from IBISAgentWeb.scene import OTHER_VIEWS_AFTER_S, PANEL_AFTER_S, THREE_D_AFTER_S, WebScene


def test_the_clicked_view_renders_first_then_the_panel_the_slice_views_and_the_3d_view_last():
    # Its own thread and event loop: the browser tests leave one running in this thread.
    with ThreadPoolExecutor(1) as pool:
        shown = pool.submit(_show_a_click_result).result()
    order = [what for what, _ in shown]
    assert order[:2] == ["Red", "panel"], shown
    assert sorted(order[2:4]) == ["Green", "Yellow"] and order[4:] == ["ThreeD"], shown
    at = dict(shown)
    assert at["Red"] < PANEL_AFTER_S <= at["panel"] < OTHER_VIEWS_AFTER_S <= min(at["Green"], at["Yellow"])
    assert max(at["Green"], at["Yellow"]) < THREE_D_AFTER_S <= at["ThreeD"]


def _show_a_click_result() -> list[tuple[str, float]]:
    """What each view rendered, and when, after a result applied with the Red view first (seconds from it)."""
    scene = WebScene()
    views = scene.app.view_manager
    views.register_factory(DirectViewFactory(do_render_offscreen=True))
    for layout in (
        ViewLayoutDefinition.axial_view(),
        ViewLayoutDefinition.coronal_view(),
        ViewLayoutDefinition.sagittal_view(),
        ViewLayoutDefinition.threed_view(),
    ):
        views.create_view(layout)
    shown: list[tuple[str, float]] = []

    async def click_result() -> None:
        loop = asyncio.get_running_loop()

        def record(tag: str) -> Callable[..., None]:
            return lambda *_: shown.append((tag, loop.time()))

        for view in views.get_views():
            view.render_window().AddObserver("EndEvent", record(view.get_singleton_tag()))
        start = loop.time()
        with scene.view_first("Red", then=lambda: shown.append(("panel", loop.time()))):
            for view in views.get_views():  # what a scene change does: every view asks to be drawn
                view.schedule_render()
        await asyncio.sleep(THREE_D_AFTER_S + 0.2)
        shown[:] = [(what, at - start) for what, at in shown]

    asyncio.run(click_result())
    assert not any(view.is_render_blocked for view in views.get_views())
    return shown
