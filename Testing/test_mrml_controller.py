"""The MRML session controller both front ends run (the desktop module's hub and the web app's bridge are thin
loops around it), on Slicer's real core with the tiny models and replayed outputs: a refused start names what
to do and leaves the open session, its segment, markers and log as they were; Step continues the session it is
asked for and opens a new one otherwise; the agent's view follows the session; the view model says what the
driver's state holds, numbered as the views number slices."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'ibisagent[slicer]')")

from mrml_scene import SceneBuilder  # noqa: E402
from volume_data import mni_crop  # noqa: E402
from workflow_ports import LOCAL, OUTPUTS  # noqa: E402

from IBISAgentLib.agent.backends import LocalBackend  # noqa: E402
from IBISAgentLib.models.loading import load_models  # noqa: E402
from IBISAgentLib.workflow import WorkflowDriver  # noqa: E402
from IBISAgentMRML import (  # noqa: E402
    LogicEditor,
    MRMLSegment,
    SessionController,
    StartRequest,
    new_scene,
    segment_array,
    view_slice,
    volume_node_from_image,
)


@pytest.fixture()
def world(tmp_path, tiny_models, device):
    headless = new_scene(tmp_path / "cache")
    built = SceneBuilder(headless)
    volume = volume_node_from_image(headless.scene, mni_crop((48, 56, 12)), "brain")
    segmentation, (target_id, other_id) = built.add_segmentation("s", volume, ("target", "other"))
    view, _ = built.add_view("Red", "Axial", volume)
    replay = tmp_path / "outputs.json"
    replay.write_text(json.dumps(OUTPUTS))
    policies, tool = load_models(f"replay:{replay}", str(tiny_models[1]), device)
    backend = LocalBackend(policies, tool, device=device)
    driver = WorkflowDriver(lambda choice: backend)
    editor = LogicEditor(headless.scene, headless.application)
    made: list[str] = []

    def make_segment(name: str):
        made.append(name)
        return segmentation, segmentation.GetSegmentation().AddEmptySegment("", name)

    controller = SessionController(
        headless.scene, driver, lambda node, segment, vol: MRMLSegment(node, segment, vol, editor), make_segment
    )
    request = StartRequest(volume, view, "Red", (segmentation, target_id), "segment the white matter", 20)
    yield {
        "controller": controller, "driver": driver, "request": request, "volume": volume, "view": view,
        "segmentation": segmentation, "target": target_id, "other": other_id, "made": made,
    }  # fmt: skip
    driver.close()
    headless.scene.Clear(True)


def settle(controller: SessionController) -> list:
    controller.driver.wait()
    return controller.poll()


def test_a_refused_start_says_what_to_do_and_loses_nothing(world):
    controller, driver, request = world["controller"], world["driver"], world["request"]
    controller.start(request, LOCAL)
    settle(controller)
    session, log, markers = driver.session, list(driver.state.log), list(driver.state.markers)
    segment = segment_array(world["segmentation"], world["target"], world["volume"])
    assert segment.any() and log and markers

    refusals = {
        "Open or select a volume": replace(request, volume=None),
        "Type what to segment": replace(request, instruction="   "),
        r"'many' is not a whole number \(max turns\)": replace(request, max_turns="many"),
        "Max turns is 0": replace(request, max_turns=0),
        "The Green view is not shown": replace(request, slice_node=None, view_name="Green"),
    }
    for message, refused in refusals.items():
        with pytest.raises(ValueError, match=message):
            controller.start(refused, LOCAL)
        assert driver.session is session and driver.state.log == log and driver.state.markers == markers
        np.testing.assert_array_equal(segment_array(world["segmentation"], world["target"], world["volume"]), segment)
    without_maker = SessionController(controller.scene, driver, controller.target_port)
    with pytest.raises(ValueError, match="Select the segment"):
        without_maker.start(replace(request, segment=None), LOCAL)
    assert world["made"] == [] and driver.session is session


def test_step_continues_the_session_asked_for_and_opens_another_otherwise(world):
    controller, driver, request = world["controller"], world["driver"], world["request"]
    started: list[str] = []

    def start(asked: StartRequest) -> None:
        started.append(asked.segment[1] if asked.segment else "new")
        controller.start(asked, LOCAL)

    stepping = replace(request, then="step")
    controller.step_or_start(stepping, lambda: start(stepping))
    settle(controller)
    first = driver.session
    assert started == [world["target"]] and len(first.steps) == 1
    controller.step_or_start(stepping, lambda: start(stepping))
    settle(controller)
    assert driver.session is first and len(first.steps) == 2 and len(started) == 1

    elsewhere = replace(stepping, segment=(world["segmentation"], world["other"]))
    controller.step_or_start(elsewhere, lambda: start(elsewhere))
    settle(controller)
    assert driver.session is not first and started[-1] == world["other"] and len(driver.session.steps) == 1

    named = replace(request, segment=None)  # no segment chosen: one named after the instruction
    controller.run_or_cancel(lambda: start(named))
    settle(controller)
    assert world["made"] == ["segment the white matter"] and driver.session.stop_reason == "terminate"


def test_the_view_model_and_the_agents_view_follow_the_session(world):
    controller, driver, request = world["controller"], world["driver"], world["request"]
    assert controller.view().status and not controller.view().has_session
    controller.start(request, LOCAL)
    assert controller.view().busy
    settle(controller)
    view = controller.view()
    geometry = driver.case.geometry
    assert not view.busy and view.has_session
    assert view.log == tuple(driver.state.log) and view.log[-1] == "stopped: terminate — Done."
    assert [m["label"] for m in view.markers] == ["1+", "2−"]
    assert view.slice_where == f"{geometry.axis} slice {geometry.index}" and view.slice_count == geometry.count
    assert view.mask_area == int(driver.session.mask.sum()) > 0

    other = (geometry.index + 3) % geometry.count
    assert controller.show_agent_slice(other) == f"{geometry.axis} slice {other}"
    assert view_slice(world["volume"], world["view"]).index == other
    controller.show_agent_slice()
    assert view_slice(world["volume"], world["view"]).index == geometry.index
    with pytest.raises(ValueError, match="outside"):
        controller.show_agent_slice(geometry.count)

    controller.close()
    assert not driver.has_session and controller.view().slice_where == ""
    with pytest.raises(ValueError, match="no agent session"):
        controller.show_agent_slice()
