"""The MRML adapter on Slicer's real core (slicer-core): transforms, oblique volumes, every view orientation,
masking, undo, markers and scene bundles, with real nodes in a headless scene. What a view shows is read from
Slicer's own reslicing, where each voxel's value encodes its index."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'ibisagent[slicer]')")

import vtk  # noqa: E402
from mrml_scene import (  # noqa: E402
    SceneBuilder,
    box,
    coded_voxels,
    decode,
    ijk_matrix,
    rotation,
    translation,
    view_image,
)
from vtk.util import numpy_support  # noqa: E402

from IBISAgentLib.imaging.volume_case import VolumeCase  # noqa: E402
from IBISAgentLib.workflow import Marker, WorkflowDriver  # noqa: E402
from IBISAgentMRML import (  # noqa: E402
    AdapterError,
    LogicEditor,
    MRMLRecord,
    align_view,
    load_mrb,
    new_scene,
    save_mrb,
    segment_array,
    store_trace,
    volume_case,
    xy_to_world,
)
from IBISAgentMRML.record import TRACE_NODE_NAME, TRACE_SCHEMA_ATTRIBUTE  # noqa: E402
from IBISAgentMRML.segments import plane_array, plane_extent  # noqa: E402
from IBISAgentMRML.transforms import ijk_to_world  # noqa: E402
from IBISAgentMRML.volumes import image_from_volume, view_slice  # noqa: E402

SHAPE = (24, 30, 28)  # (k, j, i)
CENTRE = (14, 15, 12)  # (i, j, k)


@pytest.fixture()
def built(tmp_path):
    headless = new_scene(tmp_path / "cache")
    yield SceneBuilder(headless)
    headless.scene.Clear(True)


def world_of(volume, ijk) -> np.ndarray:
    return (ijk_to_world(volume) @ np.append(np.asarray(ijk, dtype=float), 1.0))[:3]


def voxel_at(volume, ras) -> tuple[int, int, int]:
    ijk = np.linalg.solve(ijk_to_world(volume), np.append(np.asarray(ras, dtype=float), 1.0))[:3]
    return tuple(int(v) for v in np.round(ijk))


def clicked_voxel(case: VolumeCase, ras) -> tuple[int, int, int]:
    """The voxel the driver takes a world click for (it refuses clicks off the agent's slice)."""
    driver = WorkflowDriver()
    driver.case = case
    column, row = driver.ras_to_pixel(tuple(ras))
    return tuple(int(v) for v in case.geometry.pixel_to_ijk(column, row))


def test_the_headless_scene_has_what_slicer_sets_up(built):
    scene = built.scene
    assert scene.GetFirstNodeByClass("vtkMRMLInteractionNode") is not None
    assert scene.GetFirstNodeByClass("vtkMRMLSelectionNode") is not None
    assert scene.AddNewNodeByClass("vtkMRMLSegmentationNode").GetSegmentation().AddEmptySegment("a", "a") == "a"


# -- volumes --------------------------------------------------------------------------------------------------------


def test_case_geometry_is_world_geometry_for_an_oblique_volume_under_a_rotation(built):
    parent = built.add_transform("T", translation(10, -4, 7) @ rotation("A", 12))
    turn = rotation("S", 20) @ rotation("R", 15)
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((0.8, 0.9, 2.0), (-5, 3, 11), turn), parent)
    case = VolumeCase.of(image_from_volume(volume), "axial")
    for ijk in ([0, 0, 0], [3, 7, 11], [27, 29, 23]):
        np.testing.assert_allclose(case.geometry.ijk_to_ras(np.array(ijk, float)), world_of(volume, ijk), atol=1e-6)
    assert case.windowed.shape == SHAPE


def test_a_non_linear_parent_transform_is_refused(built):
    grid = built.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 1), (0, 0, 0)), grid)
    with pytest.raises(AdapterError, match="non-linear"):
        image_from_volume(volume)


# -- slice views ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", ["Axial", "Coronal", "Sagittal"])
def test_each_named_view_gives_the_slice_it_shows(built, orientation):
    parent = built.add_transform("T", translation(10, 0, 0))
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1.0, 1.2, 2.0), (-14, -17, -20)), parent)
    view, logic = built.add_view("Red", orientation, volume)
    target = np.array([9, 11, 7], float)
    view.JumpSliceByCentering(*world_of(volume, target))
    case, shown = volume_case(volume, view)
    assert shown.voxel_plane and shown.axis == orientation.lower()
    assert case.geometry.index == int(target[case.geometry.normal_axis])
    assert decode(view_image(logic)[64, 64])[case.geometry.normal_axis] == case.geometry.index


def test_bug_b_a_volume_under_a_parent_transform_the_agent_works_on_the_slice_the_view_shows(built):
    """Regression: the view is in world coordinates, the old module read the volume in its local frame and
    the agent worked on another slice than the one shown; clicks and markers mixed the two frames."""
    parent = built.add_transform("T", translation(10, 10, 10) @ rotation("S", 30))
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 1.5), (-14, -15, -18)), parent)
    view, logic = built.add_view("Red", "Axial", volume)
    view.JumpSliceByCentering(*world_of(volume, [14, 15, 5]))
    case, shown = volume_case(volume, view)
    assert shown.voxel_plane and shown.axis == "axial" and case.geometry.index == 5
    shown_image = view_image(logic)
    checked = 0
    for y in range(0, 128, 7):
        for x in range(0, 128, 7):
            if shown_image[y, x] == 0:
                continue
            voxel = decode(shown_image[y, x])
            assert voxel[2] == case.geometry.index
            assert clicked_voxel(case, xy_to_world(view, x, y)) == voxel  # where the user clicked is what they saw
            checked += 1
    assert checked > 50


def test_bug_c_an_oblique_volume_after_rotate_to_volume_plane_reads_reformat_and_is_accepted(built):
    volume = built.add_volume(
        "v", coded_voxels(SHAPE), ijk_matrix((1, 1, 2), (0, 0, 0), rotation("R", 25) @ rotation("A", -15))
    )
    for orientation in ("Axial", "Coronal", "Sagittal"):
        view, logic = built.add_view(f"V{orientation}", orientation, volume)
        view.JumpSliceByCentering(*world_of(volume, [10, 12, 9]))
        view.RotateToVolumePlane(volume)
        assert view.GetOrientation() == "Reformat"
        case, shown = volume_case(volume, view)
        assert shown.voxel_plane and shown.axis == orientation.lower()
        assert case.geometry.index == [10, 12, 9][case.geometry.normal_axis]
        assert decode(view_image(logic)[64, 64])[case.geometry.normal_axis] == case.geometry.index


def test_bug_c_a_click_20_px_from_the_centre_of_an_axial_view_of_a_tilted_volume_lands_on_its_voxel(built):
    """Regression: the old module worked on the nearest voxel plane while the view showed a resampled plane,
    so a click 20 px from the centre fell 0.58 slice off and was refused. The view is turned onto the voxel
    plane (as "Rotate to volume plane"), which then shows exactly the agent's slice."""
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 1), (-14, -15, -12), rotation("A", 10)))
    view, logic = built.add_view("Red", "Axial", volume)
    view.JumpSliceByCentering(*world_of(volume, CENTRE))
    before = view_slice(volume, view)
    assert not before.voxel_plane and abs(before.tilt_degrees - 10) < 1e-6
    assert align_view(view, volume) and not align_view(view, volume)  # turned once, then already aligned
    case, shown = volume_case(volume, view)
    assert shown.voxel_plane and (shown.axis, shown.index) == (before.axis, before.index)
    image = view_image(logic)
    for dx, dy in ((20, 0), (0, 20), (-20, 0), (0, -20), (14, 14)):
        x, y = 64 + dx, 64 + dy
        ras = xy_to_world(view, x, y)
        assert decode(image[y, x]) == voxel_at(volume, ras) == clicked_voxel(case, ras)


def test_an_axial_view_of_a_volume_turned_in_plane_maps_clicks_to_their_voxels(built):
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 2), (-10, -12, -20), rotation("S", 25)))
    view, logic = built.add_view("Red", "Axial", volume)
    view.JumpSliceByCentering(*world_of(volume, CENTRE))
    case, shown = volume_case(volume, view)
    assert view.GetOrientation() == "Axial" and shown.voxel_plane
    image = view_image(logic)
    for dx, dy in ((20, 0), (0, 20), (-20, 0), (0, -20), (14, 14)):
        ras = xy_to_world(view, 64 + dx, 64 + dy)
        assert decode(image[64 + dy, 64 + dx]) == clicked_voxel(case, ras)


def test_a_truly_oblique_view_is_refused_with_what_to_do(built):
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 1), (-14, -15, -12)))
    view, _ = built.add_view("Red", "Axial", volume)
    slice_to_ras = slicer.util.arrayFromVTKMatrix(view.GetSliceToRAS())
    view.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(rotation("R", 30) @ slice_to_ras))
    view.UpdateMatrices()
    assert view.GetOrientation() == "Reformat"
    with pytest.raises(AdapterError, match=r"oblique.*Rotate to volume plane"):
        volume_case(volume, view)


def test_a_view_off_the_volume_is_refused(built):
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 1), (-14, -15, -12)))
    view, _ = built.add_view("Red", "Axial", volume)
    view.JumpSliceByCentering(0, 0, 500)
    with pytest.raises(AdapterError, match="does not show"):
        volume_case(volume, view)


# -- segments -------------------------------------------------------------------------------------------------------


def _old_module_write(built, segmentation, segment_id, volume, mask):
    """The old module's way: a label volume on the volume's local grid, the segmentation's transform ignored."""
    label = built.headless.logics["Volumes"].CreateAndAddLabelVolume(built.scene, volume, "__old__")
    slicer.util.updateVolumeFromArray(label, mask.astype(np.uint8))
    oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(label)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented, segmentation, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    built.scene.RemoveNode(label)


@pytest.mark.parametrize(
    ("segmentation_transform", "volume_transform"),
    [
        (translation(10, 0, 0), None),  # bug (a) as reported
        (translation(0, 10, 0) @ rotation("S", 90), None),
        (rotation("R", 90), translation(5, 0, -10)),
        (translation(10, 0, 0) @ rotation("A", 30), rotation("S", 15)),
    ],
)
def test_bug_a_a_segmentation_under_a_parent_transform_gets_the_mask_in_place(
    built, segmentation_transform, volume_transform
):
    vparent = built.add_transform("VT", volume_transform) if volume_transform is not None else None
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 1), (-14, -15, -12)), vparent)
    segmentation, (target,) = built.add_segmentation(
        "s", volume, ("target",), built.add_transform("ST", segmentation_transform)
    )
    mask = box(SHAPE, (5, 6, 7), (12, 15, 10))
    LogicEditor(built.scene, built.headless.application).write(segmentation, target, volume, mask)
    np.testing.assert_array_equal(segment_array(segmentation, target, volume), mask)
    # Independently of our reader: the segment's labelmap taken to world by Slicer covers the box's world points.
    world_labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation, target, world_labelmap, True
    )
    to_ijk = vtk.vtkMatrix4x4()
    world_labelmap.GetWorldToImageMatrix(to_ijk)
    extent = world_labelmap.GetExtent()
    scalars = numpy_support.vtk_to_numpy(world_labelmap.GetPointData().GetScalars()).reshape(
        extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1
    )
    for ijk in ([5, 6, 7], [11, 14, 9], [8, 10, 8]):
        p = slicer.util.arrayFromVTKMatrix(to_ijk) @ np.append(world_of(volume, ijk), 1)
        i, j, k = (round(v) for v in p[:3])
        assert scalars[k - extent[4], j - extent[2], i - extent[0]] == 1
    _old_module_write(built, segmentation, target, volume, mask)  # the old way lands it shifted: caught here
    assert not np.array_equal(segment_array(segmentation, target, volume), mask)


def test_editable_area_and_intensity_range_apply_and_the_rest_is_kept(built):
    voxels = coded_voxels(SHAPE)
    volume = built.add_volume("v", voxels, ijk_matrix((1, 1, 1), (0, 0, 0), rotation("R", 20)))
    segmentation, (target, area) = built.add_segmentation("s", volume, ("target", "area"))
    editor = LogicEditor(built.scene, built.headless.application)
    before = box(SHAPE, (0, 0, 20), (3, 3, 22))  # target voxels far from the write
    editor.write(segmentation, target, volume, before)
    allowed = box(SHAPE, (4, 4, 4), (10, 20, 20))
    editor.write(segmentation, area, volume, allowed)
    node = editor.editor_node
    node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    node.SetMaskSegmentID(area)
    node.SetSourceVolumeIntensityMask(True)
    low, high = 1 + 10000 * 6, 10000 * 13  # exactly the voxels with k in 6..12
    node.SetSourceVolumeIntensityMaskRange(low, high)
    wanted = box(SHAPE, (2, 2, 2), (15, 25, 15))
    editor.write(segmentation, target, volume, wanted | before)
    in_range = (voxels >= low) & (voxels <= high)
    assert 0 < (wanted & allowed & in_range).sum() < (wanted & allowed).sum() < wanted.sum()  # both masks bite
    np.testing.assert_array_equal(segment_array(segmentation, target, volume), (wanted & allowed & in_range) | before)
    np.testing.assert_array_equal(segment_array(segmentation, area, volume), allowed)
    # A restore bypasses both masks (what a cancelled run needs), still never touching other segments.
    editor.write(segmentation, target, volume, np.zeros(SHAPE, bool), bypass_masking=True)
    assert not segment_array(segmentation, target, volume).any()
    np.testing.assert_array_equal(segment_array(segmentation, area, volume), allowed)
    assert node.GetSourceVolumeIntensityMask()  # the user's settings are back
    assert node.GetMaskMode() == slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment


def test_other_segments_are_never_modified_even_with_overwrite_all(built):
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 1), (0, 0, 0)))
    segmentation, (target, other) = built.add_segmentation("s", volume, ("target", "other"))
    editor = LogicEditor(built.scene, built.headless.application)
    other_mask = box(SHAPE, (0, 0, 10), (28, 30, 11))  # a whole axial slice
    editor.write(segmentation, other, volume, other_mask)
    editor.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)  # the user's setting
    mask = box(SHAPE, (5, 5, 8), (15, 15, 13))
    editor.write(segmentation, target, volume, mask)
    np.testing.assert_array_equal(segment_array(segmentation, target, volume), mask)
    np.testing.assert_array_equal(segment_array(segmentation, other, volume), other_mask)
    assert editor.editor_node.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments


def test_each_write_is_one_undo_step(built):
    volume = built.add_volume("v", coded_voxels(SHAPE), ijk_matrix((1, 1, 1), (0, 0, 0)))
    segmentation, (target,) = built.add_segmentation(
        "s", volume, ("target",), built.add_transform("ST", translation(10, 0, 0))
    )
    editor = LogicEditor(built.scene, built.headless.application)
    first, second = box(SHAPE, (2, 2, 2), (6, 6, 6)), box(SHAPE, (10, 10, 10), (20, 20, 20))
    editor.write(segmentation, target, volume, first)
    editor.write(segmentation, target, volume, second)
    np.testing.assert_array_equal(segment_array(segmentation, target, volume), second)
    editor.logic.Undo()
    np.testing.assert_array_equal(segment_array(segmentation, target, volume), first)
    editor.logic.Undo()
    assert not segment_array(segmentation, target, volume).any()


@pytest.mark.parametrize("normal_axis", [0, 1, 2])
@pytest.mark.parametrize("masking", ["none", "area and intensity range"])
def test_a_plane_write_is_the_whole_write_on_that_plane_and_one_undo_step(built, normal_axis, masking):
    """What keeps a click fast: only the key slice is read and written, with the same result as writing the
    whole segment, the rest of the segment untouched, and one undo step."""
    voxels = coded_voxels(SHAPE)
    volume = built.add_volume("v", voxels, ijk_matrix((1, 1, 2), (0, 0, 0), rotation("R", 20)))
    segmentation, (whole, planed, area) = built.add_segmentation("s", volume, ("whole", "planed", "area"))
    editor = LogicEditor(built.scene, built.headless.application)
    before = box(SHAPE, (3, 3, 3), (20, 24, 18)) & ~box(SHAPE, (8, 8, 8), (12, 12, 12))  # across the plane
    for segment in (whole, planed):
        editor.write(segmentation, segment, volume, before)
    editor.write(segmentation, area, volume, box(SHAPE, (0, 0, 0), (16, 30, 24)))
    if masking != "none":
        node = editor.editor_node
        node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
        node.SetMaskSegmentID(area)
        node.SetSourceVolumeIntensityMask(True)
        node.SetSourceVolumeIntensityMaskRange(1, 10000 * 15)  # the voxels with k < 15
    index = 10
    extent = plane_extent(SHAPE, normal_axis, index)
    where = tuple(slice(extent[2 * a], extent[2 * a + 1] + 1) for a in (2, 1, 0))
    plane = np.zeros([e1 - e0 + 1 for e0, e1 in zip(extent[4::-2], extent[5::-2], strict=True)], bool)
    plane[tuple(slice(2, 9) if s.stop - s.start > 1 else slice(None) for s in where)] = True
    wanted = before.copy()
    wanted[where] = plane
    editor.write(segmentation, whole, volume, wanted)
    editor.write_plane(segmentation, planed, volume, normal_axis, index, plane)
    result = segment_array(segmentation, planed, volume)
    np.testing.assert_array_equal(result, segment_array(segmentation, whole, volume))
    outside = np.ones(SHAPE, bool)
    outside[where] = False
    np.testing.assert_array_equal(result[outside], before[outside])
    assert not np.array_equal(result, before)
    assert np.array_equal(result[where], plane) == (masking == "none")  # masking bites where it is on
    np.testing.assert_array_equal(plane_array(segmentation, planed, volume, normal_axis, index), result[where])
    editor.logic.Undo()
    np.testing.assert_array_equal(segment_array(segmentation, planed, volume), before)


# -- markers, trace, bundles ----------------------------------------------------------------------------------------


def test_markers_sit_at_the_world_positions_of_their_voxels(built):
    parent = built.add_transform("T", translation(10, -3, 5) @ rotation("S", 30))
    volume = built.add_volume(
        "v", coded_voxels(SHAPE), ijk_matrix((1, 1, 2), (-14, -15, -24), rotation("R", 10)), parent
    )
    view, _ = built.add_view("Red", "Axial", volume)
    view.JumpSliceByCentering(*world_of(volume, CENTRE))
    align_view(view, volume)
    case, _ = volume_case(volume, view)
    geometry = case.geometry
    pixels = [(3, 4, True, "agent"), (20, 9, False, "agent"), (7, 25, True, "user")]
    markers = [
        Marker(n, positive, source, tuple(float(v) for v in geometry.ijk_to_ras(geometry.pixel_to_ijk(c, r))))
        for n, (c, r, positive, source) in enumerate(pixels, start=1)
    ]
    record = MRMLRecord(built.scene)
    record.show_markers(markers)
    negative = record.nodes[("agent", False)]
    assert negative.GetNthControlPointLabel(0) == "2−"
    assert tuple(negative.GetDisplayNode().GetSelectedColor()) == pytest.approx(markers[1].color)
    for marker, (c, r, *_) in zip(markers, pixels, strict=True):
        node = record.nodes[(marker.source, marker.positive)]
        labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
        world = np.array(node.GetNthControlPointPositionWorld(labels.index(marker.label)))
        np.testing.assert_allclose(world, world_of(volume, geometry.pixel_to_ijk(c, r)), atol=1e-6)
        assert clicked_voxel(case, world) == tuple(int(v) for v in geometry.pixel_to_ijk(c, r))
    record.show_markers(markers[:1])
    assert negative.GetNumberOfControlPoints() == 0


def test_a_bundle_round_trip_keeps_voxels_segments_markups_and_trace(built, tmp_path):
    scene = built.scene
    voxels = coded_voxels(SHAPE)
    volume = built.add_volume(
        "oblique",
        voxels,
        ijk_matrix((1, 1, 2), (0, 0, 0), rotation("R", 20)),
        built.add_transform("T", translation(10, 0, 0)),
    )
    segmentation, (target, _) = built.add_segmentation("s", volume, ("target", "other"))
    mask = box(SHAPE, (3, 4, 5), (9, 10, 11))
    LogicEditor(scene, built.headless.application).write(segmentation, target, volume, mask)
    MRMLRecord(scene).show_markers(
        [Marker(1, True, "agent", (1.5, 2.5, 3.5)), Marker(2, False, "user", (4.0, 5.0, 6.0))]
    )
    store_trace(scene, json.dumps({"instruction": "segment the tumour — zone ü \ud800"}))
    world_before = ijk_to_world(volume)
    save_mrb(scene, tmp_path / "scene.mrb")
    load_mrb(scene, tmp_path / "scene.mrb")
    loaded = scene.GetFirstNodeByName("oblique")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), voxels)
    np.testing.assert_allclose(ijk_to_world(loaded), world_before, atol=1e-6)
    np.testing.assert_array_equal(segment_array(scene.GetFirstNodeByName("s"), target, loaded), mask)
    fiducials = [
        scene.GetNthNodeByClass(i, "vtkMRMLMarkupsFiducialNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"))
    ]
    points = {
        f.GetNthControlPointLabel(i): tuple(f.GetNthControlPointPositionWorld(i))
        for f in fiducials
        for i in range(f.GetNumberOfControlPoints())
    }
    assert points == {"1+": pytest.approx((1.5, 2.5, 3.5)), "2−": pytest.approx((4.0, 5.0, 6.0))}
    text = scene.GetFirstNodeByName(TRACE_NODE_NAME)
    assert json.loads(text.GetText())["instruction"] == "segment the tumour — zone ü \ud800"
    assert text.GetAttribute(TRACE_SCHEMA_ATTRIBUTE) == "ibisagent-trace"
