"""The whole clinician workflow on Slicer's real core: the workflow driver over the MRML adapter's ports, with
the tiny models and replayed outputs, in a headless scene; and `ibisagent segment --scene`, whose bundle is
reloaded and checked voxel by voxel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'ibisagent[slicer]')")

import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402
from mrml_scene import SceneBuilder, rotation, translation  # noqa: E402
from test_cli import ibisagent, replay_file  # noqa: E402
from volume_data import mni_crop  # noqa: E402
from workflow_ports import LOCAL, OUTPUTS, clicks_then_waits, waits_for_release  # noqa: E402

from IBISAgentLib.agent.backends import LocalBackend  # noqa: E402
from IBISAgentLib.agent.trace import Trace  # noqa: E402
from IBISAgentLib.models.loading import load_models  # noqa: E402
from IBISAgentLib.tools.click_tool import SAM2Tool  # noqa: E402
from IBISAgentLib.tools.propagation import PropagationOptions  # noqa: E402
from IBISAgentLib.workflow import COLORS, Failed, SliceChanged, WorkflowDriver  # noqa: E402
from IBISAgentMRML import (  # noqa: E402
    LogicEditor,
    MRMLRecord,
    MRMLSegment,
    load_mrb,
    new_scene,
    save_mrb,
    segment_array,
    volume_case,
    volume_node_from_image,
    xy_to_world,
)
from IBISAgentMRML.record import TRACE_NODE_NAME  # noqa: E402


@pytest.fixture()
def world(tmp_path, tiny_models, device):
    """A real brain block, tilted and under a transform, a segmentation under another transform with a target
    and another segment, an axial view, and a driver on the tiny models."""
    headless = new_scene(tmp_path / "cache")
    built = SceneBuilder(headless)
    volume = volume_node_from_image(headless.scene, mni_crop((48, 56, 12)), "brain")
    volume.SetAndObserveTransformNodeID(built.add_transform("VT", translation(5, -3, 8) @ rotation("S", 20)).GetID())
    segmentation, (target_id, other_id) = built.add_segmentation(
        "s", volume, ("target", "other"), built.add_transform("ST", translation(10, 0, 0))
    )
    view, _ = built.add_view("Red", "Axial", volume)
    case, _ = volume_case(volume, view)
    editor = LogicEditor(headless.scene, headless.application)
    replay = tmp_path / "outputs.json"
    replay.write_text(json.dumps(OUTPUTS))
    policies, tool = load_models(f"replay:{replay}", str(tiny_models[1]), device)
    backend = LocalBackend(policies, tool, device=device)
    yield {
        "headless": headless, "scene": headless.scene, "volume": volume, "segmentation": segmentation, "view": view,
        "case": case, "editor": editor, "target": MRMLSegment(segmentation, target_id, volume, editor),
        "other": other_id, "record": MRMLRecord(headless.scene), "driver": WorkflowDriver(lambda choice: backend),
        "backend": backend,
    }  # fmt: skip
    headless.scene.Clear(True)


def test_run_correct_undo_propagate_and_save_on_a_real_scene(world, tmp_path):
    scene, volume, case, driver = world["scene"], world["volume"], world["case"], world["driver"]
    target, record, editor = world["target"], world["record"], world["editor"]
    geometry = case.geometry
    other = np.zeros(case.windowed.shape, bool)
    geometry.insert(other, np.ones((geometry.height, geometry.width), bool))  # covers the agent's whole slice
    editor.write(world["segmentation"], world["other"], volume, other)

    driver.start(case, "segment the white matter", target, record, LOCAL)
    driver.wait()
    segment = target.read()
    assert segment.any() and np.array_equal(geometry.extract(segment), driver.session.mask)
    elsewhere = segment.copy()
    geometry.insert(elsewhere, np.zeros((geometry.height, geometry.width), bool))
    assert not elsewhere.any()  # the agent's slice only
    np.testing.assert_array_equal(segment_array(world["segmentation"], world["other"], volume), other)
    steps = driver.session.steps
    for (source, positive), label, step in ((("agent", True), "1+", steps[0]), (("agent", False), "2−", steps[1])):
        node = record.nodes[(source, positive)]
        assert node.GetNthControlPointLabel(0) == label
        assert tuple(node.GetDisplayNode().GetSelectedColor()) == pytest.approx(COLORS[(source, positive)])
        np.testing.assert_allclose(node.GetNthControlPointPositionWorld(0), step.ras, atol=1e-6)
    assert json.loads(scene.GetFirstNodeByName(TRACE_NODE_NAME).GetText())["stop_reason"] == "terminate"

    # A correction where the clinician clicks in the view: the voxel under the cursor.
    ras = xy_to_world(world["view"], 40, 70)
    driver.click(tuple(ras), positive=True)
    events = driver.wait()
    assert isinstance(events[0], SliceChanged) and events[0].step.source == "user"
    assert record.nodes[("user", True)].GetNthControlPointLabel(0) == "3+"
    corrected = target.read()
    # The log names each click's marker as the views label it, and says where it landed and what it changed.
    log = driver.state.log
    assert log[1].startswith("1. agent: positive click 1+ on ") and log[1].endswith(" — white matter here")
    assert log[2].startswith("2. agent: negative click 2− on ")
    user = driver.session.steps[-1]
    assert log[-1] == (
        f"4. you: positive click 3+ on {geometry.axis} slice {geometry.index}, voxel "
        f"({', '.join(map(str, user.ijk))}): {steps[1].mask_area} -> {user.mask_area} px"
    )
    assert user.ijk[geometry.normal_axis] == geometry.index and user.mask_area != steps[1].mask_area
    driver.undo()
    driver.wait()
    assert driver.state.log[-1] == "undone: step 4 (marker 3+)"
    driver.click(tuple(ras), positive=True)
    driver.wait()
    assert not np.array_equal(corrected, segment)
    editor.logic.Undo()  # each write is one step of the editor's undo history
    np.testing.assert_array_equal(target.read(), segment)
    editor.logic.Redo()
    driver.propagate(PropagationOptions(first=geometry.index - 2, last=geometry.index + 2, stop_after_empty=0))
    driver.wait()
    grown = target.read()
    assert all(geometry.at(k).extract(grown).any() for k in range(geometry.index - 2, geometry.index + 3))
    np.testing.assert_array_equal(segment_array(world["segmentation"], world["other"], volume), other)

    save_mrb(scene, tmp_path / "review.mrb")
    load_mrb(scene, tmp_path / "review.mrb")
    loaded_volume = scene.GetFirstNodeByName(volume.GetName())
    np.testing.assert_array_equal(segment_array(scene.GetFirstNodeByName("s"), "target", loaded_volume), grown)
    assert json.loads(scene.GetFirstNodeByName(TRACE_NODE_NAME).GetText())["steps"][-1]["source"] == "user"


def test_masking_applies_to_the_agents_writes_and_a_cancel_restores_exactly(world, tiny_models, device):
    case, editor, volume = world["case"], world["editor"], world["volume"]
    geometry = case.geometry
    before = np.zeros(case.windowed.shape, bool)
    geometry.at(geometry.index + 3).insert(before, np.ones((geometry.height, geometry.width), bool))
    world["target"].write(before)
    allowed = np.zeros(case.windowed.shape, bool)
    allowed[:, : case.windowed.shape[1] // 2, :] = True  # the editable area: half of every slice
    editor.write(world["segmentation"], world["other"], volume, allowed)
    editor.editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.editor_node.SetMaskSegmentID(world["other"])

    ClicksThenWaits, release = clicks_then_waits(OUTPUTS[0], OUTPUTS[1])
    backend = LocalBackend(ClicksThenWaits, SAM2Tool(tiny_models[1], device=device))
    driver = WorkflowDriver(lambda choice: backend)
    driver.start(case, "x", world["target"], world["record"], LOCAL)
    assert release.wait(60)
    driver.poll()
    written = world["target"].read()
    assert written[geometry.index].any() or geometry.extract(written).any()
    assert not (written & ~allowed & ~before).any()  # nothing outside the editable area
    driver.cancel()
    driver.wait()
    np.testing.assert_array_equal(world["target"].read(), before)  # exactly as before the run
    assert (
        world["record"].nodes.get(("agent", True)) is None
        or not world["record"].nodes[("agent", True)].GetNumberOfControlPoints()
    )


def test_closing_the_scene_mid_run_writes_nothing_and_leaves_the_driver_ready(world, tiny_models, device):
    WaitsForRelease, release = waits_for_release(OUTPUTS[0])
    backend = LocalBackend(WaitsForRelease, SAM2Tool(tiny_models[1], device=device))
    driver = WorkflowDriver(lambda choice: backend)
    scene = world["scene"]
    scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, lambda caller, event: driver.close(timeout=0.1))
    driver.start(world["case"], "x", world["target"], world["record"], LOCAL)
    worker = driver._worker
    scene.Clear(False)  # what File > Close scene does
    release.set()
    worker.join(30)
    assert driver.poll() == [] and not driver.state.busy and driver.session is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_a_segment_removed_meanwhile_is_a_message_not_a_crash(world):
    driver = world["driver"]
    driver.start(world["case"], "x", world["target"], world["record"], LOCAL, then=None)
    driver.wait()
    world["scene"].RemoveNode(world["segmentation"])
    driver.step()
    events = driver.wait()
    assert any(isinstance(e, Failed) and "removed from the scene" in e.message for e in events)


# -- ibisagent segment --scene --------------------------------------------------------------------------------------


def test_the_scene_bundle_holds_volume_segment_clicks_and_trace(tmp_path, tiny_models):
    image = mni_crop((48, 56, 10))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # in-plane rotated: RAS differs from IJK
    sitk.WriteImage(image, str(tmp_path / "brain.nii.gz"))
    outputs = [*OUTPUTS[:2], "<think>x</think><action>Positive Point (0.7000, 0.6000)</action>", OUTPUTS[2]]
    result = ibisagent(
        "segment", tmp_path / "brain.nii.gz", "--prompt", "segment the white matter", "--slice", "axial:4",
        "--mllm", replay_file(tmp_path, outputs), "--sam2", tiny_models[1], "--click", "10,12,-",
        "--out", tmp_path / "mask.nii.gz", "--trace", tmp_path / "trace.json", "--scene", tmp_path / "review.mrb",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    trace = Trace.load(tmp_path / "trace.json")
    headless = new_scene(tmp_path / "cache")
    scene = headless.scene
    load_mrb(scene, tmp_path / "review.mrb")
    volume = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), sitk.GetArrayFromImage(image))
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "segment the white matter"
    terminology = vtk.mutable("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
    assert "~SCT^91723000^Anatomical Structure~SCT^389080008^White Matter~" in str(terminology)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz"))).astype(bool)
    assert expected.any()
    np.testing.assert_array_equal(segment_array(segmentation, segment_id, volume), expected)
    points = {}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLMarkupsFiducialNode")
        for n in range(node.GetNumberOfControlPoints()):
            points[node.GetNthControlPointLabel(n)] = (
                node.GetNthControlPointPositionWorld(n),
                node.GetDisplayNode().GetSelectedColor(),
            )
    clicks = [s for s in trace.steps if s.action is not None and s.action.is_click]
    assert sorted(points) == ["1+", "2−", "3+", "4−"] and len(clicks) == 4
    for number, step in enumerate(clicks, start=1):
        label = f"{number}{'+' if step.action.kind == 'positive' else '−'}"
        where, color = points[label]
        np.testing.assert_allclose(where, step.ras, atol=1e-5)
        assert color == pytest.approx(COLORS[(step.source, step.action.kind == "positive")])
    assert json.loads(scene.GetFirstNodeByName(TRACE_NODE_NAME).GetText()) == json.loads(
        (tmp_path / "trace.json").read_text(encoding="utf-8")
    )
    headless.scene.Clear(True)


def test_scene_without_slicer_core_or_for_a_2d_image_is_exit_2(tmp_path, tiny_models):
    from conftest import SAMPLE

    two_d = ibisagent("segment", SAMPLE, "--prompt", "x", "--scene", tmp_path / "x.mrb", cwd=tmp_path)
    assert two_d.returncode == 2 and "--scene applies to volumes" in two_d.stderr
    sitk.WriteImage(mni_crop(), str(tmp_path / "brain.nii.gz"))
    blocker = tmp_path / "no-slicer" / "slicer"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'slicer'\")\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "IBISAgentLib", "segment", str(tmp_path / "brain.nii.gz"), "--prompt", "x",
         "--scene", str(tmp_path / "x.mrb")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "pip install 'ibisagent[slicer]'" in result.stderr
    assert "loading" not in result.stderr and not (tmp_path / "x.mrb").exists()
