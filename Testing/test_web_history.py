"""The web app's one undo history on Slicer's real core and trame-slicer's Segment Editor, without a browser:
real strokes (the paint effect's own glyph path) and Islands, the agent's steps and propagation on the tiny
models with replayed outputs. Undo puts back exactly what each edit replaced, in order, whoever made it; a
stroke costs the history the voxels it changed, not two copies of the segmentation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'ibisagent[slicer]')")

import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402
from mrml_scene import SceneBuilder  # noqa: E402
from volume_data import mni_crop  # noqa: E402
from workflow_ports import LOCAL, OUTPUTS  # noqa: E402

from IBISAgentLib.agent.backends import LocalBackend  # noqa: E402
from IBISAgentLib.models.loading import load_models  # noqa: E402
from IBISAgentLib.tools.propagation import PropagationOptions  # noqa: E402
from IBISAgentLib.workflow import WorkflowDriver  # noqa: E402
from IBISAgentMRML import LogicEditor, MRMLRecord, volume_case  # noqa: E402
from IBISAgentMRML.record import TRACE_NODE_NAME  # noqa: E402
from IBISAgentWeb.editing import EditHistory  # noqa: E402
from IBISAgentWeb.hand_tools import (  # noqa: E402
    COLOUR,
    MAX_BRUSH_MM,
    MAX_ISLAND,
    MAX_NAME,
    _brush_mm,
    _colour,
    _count,
    _name,
    _opacity,
)
from IBISAgentWeb.labelmap_undo import LabelmapEdit  # noqa: E402
from IBISAgentWeb.scene import WebScene  # noqa: E402

SIZE = (48, 56, 12)  # (i, j, k)


@pytest.fixture()
def page(tmp_path, tiny_models, device):
    """What the web app holds: its scene and Segment Editor, a target and another segment, the history, and a
    driver on the tiny models whose results are applied and recorded as the page's poll does."""
    path = tmp_path / "brain.nii.gz"
    sitk.WriteImage(mni_crop(SIZE), str(path))
    scene = WebScene()
    assert scene.open_path(str(path)) is None
    target_id = scene.resolve_segment(scene.add_segment("target"))[1]
    other_id = scene.resolve_segment(scene.add_segment("other"))[1]
    node = scene.app.segmentation_editor.active_segmentation_node
    view, _ = SceneBuilder(SimpleNamespace(scene=scene.scene, application=scene.app.app_logic)).add_view(
        "Test", "Axial", scene.volume
    )
    case, _ = volume_case(scene.volume, view)
    replay = tmp_path / "outputs.json"
    replay.write_text(json.dumps(OUTPUTS))
    policies, tool = load_models(f"replay:{replay}", str(tiny_models[1]), device)
    backend = LocalBackend(policies, tool, device=device)
    driver = WorkflowDriver(lambda choice: backend)
    history = EditHistory(scene.app.segmentation_editor, driver)
    writer = LogicEditor(scene.scene, scene.app.app_logic)
    port = history.port(node, target_id, scene.volume, writer)
    record = MRMLRecord(scene.scene)

    def settle() -> list:
        events = driver.wait()
        history.record(events)
        return events

    def start(then: str | None) -> None:
        driver.start(case, "segment the white matter", port, record, LOCAL, then=then)
        history.session_started()
        settle()

    yield SimpleNamespace(
        scene=scene, node=node, target=target_id, other=other_id, case=case, driver=driver, history=history,
        port=port, settle=settle, start=start, editor=scene.app.segmentation_editor,
    )  # fmt: skip
    driver.close()
    scene.scene.Clear(True)


def stroke(page, tool: str, ijk: tuple[int, int, int], segment_id: str | None = None, mm: float = 4.0) -> None:
    """A stroke of the brush, one dab at voxel ``ijk``: what the paint widget hands the effect on a click."""
    page.history.set_tool(tool, segment_id or page.target, mm, "erase_inside")
    volume = page.scene.volume
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint((*ijk, 1.0))[:3]
    points = vtk.vtkPoints()
    points.InsertNextPoint(*ras)
    brush = vtk.vtkSphereSource()
    brush.SetRadius(mm / 2)
    brush.SetPhiResolution(16)
    brush.SetThetaResolution(16)
    brush.Update()
    page.editor.active_segment_modifier.apply_glyph(brush.GetOutput(), points)
    page.history.set_tool(None, "", mm, "erase_inside")


def voxels(page, segment_id: str | None = None) -> np.ndarray:
    return page.editor.get_segment_labelmap(segment_id or page.target, as_numpy_array=True).astype(bool)


def key_plane(page) -> np.ndarray:
    return page.port.read_plane(page.case.geometry)


def off_mask_voxel(page) -> tuple[int, int, int]:
    """A voxel on the agent's slice outside the current mask, as (i, j, k)."""
    geometry, plane = page.case.geometry, key_plane(page)
    rows, columns = np.nonzero(~plane)
    pick = len(rows) // 2
    whole = np.zeros(page.case.windowed.shape, bool)
    one = np.zeros_like(plane)
    one[rows[pick], columns[pick]] = True
    geometry.insert(whole, one)
    k, j, i = (int(v[0]) for v in np.nonzero(whole))
    return i, j, k


def test_a_stroke_is_kept_as_the_voxels_it_changed_and_undone_exactly(page):
    before = voxels(page)
    stroke(page, "paint", (20, 20, 6))
    painted = voxels(page)
    assert painted.sum() > before.sum()
    command = page.history.stack.latest()
    assert isinstance(command, LabelmapEdit), "the editor's two whole copies were kept"
    assert command.nbytes < 200, f"a 4 mm dab holds {command.nbytes} bytes"
    stroke(page, "erase", (20, 20, 6), mm=2.0)
    assert voxels(page).sum() < painted.sum()
    page.history.undo()
    np.testing.assert_array_equal(voxels(page), painted)
    page.history.undo()
    np.testing.assert_array_equal(voxels(page), before)
    assert not page.history.stack.can_undo()


def test_undo_puts_back_each_segment_of_a_shared_layer_exactly(page):
    """Strokes on the second segment (its label in the shared layer is not 1), a stroke of the target over it
    (the editor overwrites other segments), undone one by one: every segment as it was, voxel for voxel."""
    states = [(voxels(page), voxels(page, page.other))]
    stroke(page, "paint", (20, 20, 6), segment_id=page.other, mm=8.0)
    states.append((voxels(page), voxels(page, page.other)))
    stroke(page, "erase", (20, 20, 6), segment_id=page.other, mm=3.0)
    states.append((voxels(page), voxels(page, page.other)))
    stroke(page, "paint", (23, 20, 6), mm=4.0)  # the target over part of the other
    assert voxels(page, page.other).sum() < states[-1][1].sum(), "the stroke took nothing from the other segment"
    for target, other in reversed(states):
        page.history.undo()
        np.testing.assert_array_equal(voxels(page), target)
        np.testing.assert_array_equal(voxels(page, page.other), other)


def test_an_edit_after_the_session_started_is_not_merged_into_an_older_one(page):
    """The editor merges a rename into the rename before it; not across the start of a session."""
    properties = page.editor.get_segment_properties(page.target)
    properties.name = "first name"
    page.editor.set_segment_properties(page.target, properties)
    page.start(None)
    properties.name = "second name"
    page.editor.set_segment_properties(page.target, properties)
    page.history.undo()  # the second rename: newer than the session, which stays
    assert page.driver.has_session
    assert page.editor.get_segment_properties(page.target).name == "first name"


def test_a_new_segment_is_coded_from_its_name_for_a_dicom_seg_export(page):
    node, segment_id = page.scene.resolve_segment(page.scene.add_segment("Segment the liver tumor"))
    segment = node.GetSegmentation().GetSegment(segment_id)
    tag = vtk.mutable("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    category, kind = str(tag).split("~")[1:3]
    assert (category, kind) == ("SCT^49755003^Morphologically Abnormal Structure", "SCT^108369006^Tumor")


def test_islands_acts_on_the_target_whichever_segment_the_editor_had(page):
    stroke(page, "paint", (10, 10, 6), mm=6.0)
    stroke(page, "paint", (35, 40, 6), mm=3.0)
    stroke(page, "paint", (20, 20, 6), segment_id=page.other, mm=3.0)
    other, two_parts = voxels(page, page.other), voxels(page)
    page.editor.set_active_segment_id(page.other)
    page.history.islands(page.target, keep_largest=True, minimum_size=0)
    kept = voxels(page)
    assert 0 < kept.sum() < two_parts.sum()
    np.testing.assert_array_equal(voxels(page, page.other), other)
    assert isinstance(page.history.stack.latest(), LabelmapEdit)
    page.history.undo()
    np.testing.assert_array_equal(voxels(page), two_parts)


def test_undoing_an_agent_step_keeps_what_was_painted_on_its_slice_before_it(page):
    page.start("step")  # the agent's first click
    first = key_plane(page)
    assert first.any()
    stroke(page, "paint", off_mask_voxel(page))
    painted = key_plane(page)
    assert painted.sum() > first.sum()
    page.driver.step()  # the agent's negative click writes its own mask over the key slice
    page.settle()
    assert not np.array_equal(key_plane(page), painted)
    turned_off = []
    page.history.on_tools_off = lambda: turned_off.append(True)
    page.history.undo()  # through the driver: its log and markers follow
    assert turned_off, "a stroke could land before the driver's write"
    page.settle()
    assert page.driver.state.log[-1].startswith("undone: step 2")
    np.testing.assert_array_equal(key_plane(page), painted)
    page.history.undo()  # the stroke
    np.testing.assert_array_equal(key_plane(page), first)


def test_undoing_past_the_session_start_closes_the_session(page):
    page.start("run")
    after_run = voxels(page)
    stroke(page, "paint", (5, 5, 2))
    page.start(None)  # a new session on the segment as it is, no step yet
    assert page.driver.has_session
    page.history.undo()  # the stroke, older than the session that started from it
    assert not page.driver.has_session
    np.testing.assert_array_equal(voxels(page), after_run)


def test_a_driver_undo_that_fails_stays_in_the_history(page):
    page.start("run")
    commands = page.history.stack.n_commands()
    session = page.driver.session

    def server_gone():
        raise RuntimeError("the server went away")

    session.undo = server_gone  # what a remote session's undo does when its server is gone
    page.history.undo()
    events = page.settle()
    assert any(type(e).__name__ == "Failed" for e in events)
    assert page.history.stack.can_undo() and page.history.stack.n_commands() == commands
    assert page.history.stack.index() == commands


def test_undoing_a_propagation_takes_back_its_slices_strip_and_trace_records(page):
    page.start("run")
    key_only = voxels(page)
    page.driver.propagate(PropagationOptions(0, page.case.geometry.count - 1, 2, False))
    page.settle()
    assert page.driver.state.slices and voxels(page).sum() >= key_only.sum()
    page.history.undo()
    np.testing.assert_array_equal(voxels(page), key_only)
    assert page.driver.state.slices == []
    assert page.driver.state.log[-1].startswith("undone: propagation through slices 0–")
    trace = json.loads(page.scene.scene.GetFirstNodeByName(TRACE_NODE_NAME).GetText())
    assert not trace.get("propagation")


def test_undoing_a_second_propagation_gives_back_the_first_ones_strip_and_trace_records(page):
    page.start("run")
    key_only = voxels(page)
    last = page.case.geometry.count - 1

    def trace() -> dict:
        return json.loads(page.scene.scene.GetFirstNodeByName(TRACE_NODE_NAME).GetText())

    page.driver.propagate(PropagationOptions(0, last, 0, False))
    page.settle()
    first_strip, first_voxels, first_trace = page.driver.state.slices, voxels(page), trace()
    page.driver.propagate(PropagationOptions(1, last - 1, 0, True))
    page.settle()
    assert page.driver.state.slices != first_strip and trace()["propagation"] != first_trace["propagation"]
    page.history.undo()
    np.testing.assert_array_equal(voxels(page), first_voxels)
    assert page.driver.state.slices == first_strip
    assert trace()["propagation"] == first_trace["propagation"] and trace()["checks"] == first_trace["checks"]
    page.history.undo()
    np.testing.assert_array_equal(voxels(page), key_only)
    assert page.driver.state.slices == [] and not trace().get("propagation")


# -- what the page sends: any text gets a value in range or a ValueError that says what to give ------------


@given(st.one_of(st.text(max_size=40), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.integers()))
def test_the_segment_lists_and_tools_inputs_take_only_values_in_range(value):
    for parse, ok in (
        (_opacity, lambda v: 0.0 <= v <= 1.0),
        (_brush_mm, lambda v: 0.0 < v <= MAX_BRUSH_MM),
        (_colour, lambda v: COLOUR.fullmatch(v) is not None),
        (_name, lambda v: 0 < len(v) <= MAX_NAME and v.isprintable() and v == v.strip()),
        (_count, lambda v: 1 <= v <= MAX_ISLAND),
    ):
        try:
            parsed = parse(value)
        except ValueError as exc:
            assert str(exc) and len(str(exc)) < 200 + len(repr(value))
        else:
            assert ok(parsed), (parse.__name__, value, parsed)
            assert not isinstance(parsed, float) or math.isfinite(parsed)


def test_a_brush_of_inf_or_nan_millimetres_is_refused():
    for value in ("inf", "nan", "-1", "0", "1e9"):
        with pytest.raises(ValueError, match="brush"):
            _brush_mm(value)
    assert _brush_mm("7.5") == 7.5
