"""The web app's 3D surfaces on Slicer's real core: edits no longer rebuild a surface before they return, the
surfaces built afterwards in a worker thread are closed and sit where the segments are (an oblique volume, a
transformed segmentation), the last surface stays until the next is ready, removed segments and replaced volumes
take their models with them, and nothing of it is saved with the scene."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'ibisagent[slicer]')")

import vtk  # noqa: E402
from mrml_scene import SceneBuilder, box, ijk_matrix, rotation, translation  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from IBISAgentMRML import LogicEditor, load_mrb, new_scene, save_mrb  # noqa: E402
from IBISAgentMRML.transforms import ijk_to_world, local_to_world  # noqa: E402
from IBISAgentWeb.surfaces import SURFACE, SegmentSurfaces  # noqa: E402

SHAPE = (20, 24, 22)  # (k, j, i)
SPACING = (1.5, 1.0, 2.0)
SHIFT = (30.0, -12.0, 7.0)


@pytest.fixture()
def setup(tmp_path):
    headless = new_scene(tmp_path / "cache")
    built = SceneBuilder(headless)
    grid = ijk_matrix(SPACING, (-10.0, 5.0, 3.0), turn=rotation("S", 30.0) @ rotation("R", 20.0))
    volume = built.add_volume("ct", np.zeros(SHAPE, dtype=np.int16), grid)
    shift = built.add_transform("shift", translation(*SHIFT))
    segmentation, ids = built.add_segmentation("seg", volume, ("liver", "spleen"), parent=shift)
    fits: list[int] = []
    surfaces = SegmentSurfaces(headless.scene, lambda: fits.append(1))
    yield headless, volume, segmentation, ids, surfaces, fits
    headless.scene.Clear(True)


def run_in_own_loop(scenario) -> None:
    """The web app's event loop, played by a fresh one on a thread of its own (a pytest process that ran the
    browser tests already has a loop running on its main thread)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, scenario()).result()


def voxel_places(model, volume) -> np.ndarray:
    """The surface's points as the volume's (i, j, k) indices, through the model's transforms to the world."""
    points = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData()).astype(float)
    world = local_to_world(model) @ np.column_stack([points, np.ones(len(points))]).T
    return (np.linalg.inv(ijk_to_world(volume)) @ world).T[:, :3]


def assert_wraps(model, volume, lo, hi) -> None:
    """The surface wraps the voxels lo <= (i, j, k) < hi: centred on them, no point beyond their outer faces
    (smoothing only rounds it inwards) nor more than a voxel inside them, and closed."""
    ijk = voxel_places(model, volume)
    np.testing.assert_allclose(ijk.mean(axis=0), (np.array(lo) + hi - 1) / 2, atol=0.5)
    assert (ijk >= np.array(lo) - 0.5 - 1e-3).all() and (ijk <= np.array(hi) - 0.5 + 1e-3).all()
    inside = np.minimum(ijk - (np.array(lo) - 0.5), (np.array(hi) - 0.5) - ijk).min(axis=1)
    assert inside.max() <= 1.0, "a point lies more than a voxel inside the segment's outer faces"
    assert open_edges(model.GetPolyData()) == 0, "the surface is not closed"


def open_edges(polydata) -> int:
    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(polydata)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return edges.GetOutput().GetNumberOfCells()


def model_of(surfaces: SegmentSurfaces, segmentation, segment_id):
    return surfaces._models.get((segmentation.GetID(), segment_id))


def test_surfaces_are_built_after_the_edit_where_the_segment_is(setup, tmp_path):
    headless, volume, segmentation, (liver, spleen), surfaces, fits = setup
    editor = LogicEditor(headless.scene, headless.application)

    async def scenario():
        surfaces.show(segmentation)
        editor.write(segmentation, liver, volume, box(SHAPE, (4, 5, 6), (14, 15, 16)))
        assert not segmentation.GetSegmentation().ContainsRepresentation(SURFACE), "the edit built a surface"
        await surfaces.wait_idle()
        model = model_of(surfaces, segmentation, liver)
        assert_wraps(model, volume, (4, 5, 6), (14, 15, 16))
        assert (
            model_of(surfaces, segmentation, spleen) is None
            or not model_of(surfaces, segmentation, spleen).GetPolyData().GetNumberOfPoints()
        )
        assert fits == [1], "the 3D views are fitted when the first surface appears"
        assert model.GetDisplayNode().GetColor() == pytest.approx(
            segmentation.GetSegmentation().GetSegment(liver).GetColor()
        )
        assert model.GetDisplayNode().GetVisibility2D() == 0

        # a smaller segment: the old surface stays on screen until the new one is ready
        shown = model.GetPolyData()
        editor.write_plane(segmentation, liver, volume, 2, 6, np.zeros(SHAPE[1:], dtype=bool))
        editor.write(segmentation, liver, volume, box(SHAPE, (4, 5, 10), (9, 15, 16)))
        assert model.GetPolyData() is shown
        await surfaces.wait_idle()
        assert model.GetPolyData() is not shown
        assert_wraps(model, volume, (4, 5, 10), (9, 15, 16))
        assert fits == [1]

        # a new colour follows without a conversion; a removed segment takes its model with it
        segmentation.GetSegmentation().GetSegment(liver).SetColor(0.1, 0.9, 0.2)
        await surfaces.wait_idle()
        assert model.GetDisplayNode().GetColor() == pytest.approx((0.1, 0.9, 0.2))
        save_mrb(headless.scene, tmp_path / "scene.mrb")
        segmentation.GetSegmentation().RemoveSegment(liver)
        await surfaces.wait_idle()
        assert model.GetScene() is None and model_of(surfaces, segmentation, liver) is None

    run_in_own_loop(scenario)
    load_mrb(headless.scene, tmp_path / "scene.mrb")
    assert not headless.scene.GetNodesByClass("vtkMRMLModelNode").GetNumberOfItems(), "a display model was saved"
    assert headless.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1


def test_a_shown_surface_representation_is_dropped_and_clear_removes_the_models(setup):
    headless, volume, segmentation, (liver, _spleen), surfaces, _fits = setup
    editor = LogicEditor(headless.scene, headless.application)
    editor.write(segmentation, liver, volume, box(SHAPE, (2, 2, 2), (8, 8, 8)))
    segmentation.CreateClosedSurfaceRepresentation()  # as Slicer's "Show 3D" leaves it

    async def scenario():
        surfaces.show(segmentation)
        assert not segmentation.GetSegmentation().ContainsRepresentation(SURFACE)
        await surfaces.wait_idle()
        model = model_of(surfaces, segmentation, liver)
        assert model.GetPolyData().GetNumberOfPoints() > 0
        editor.write(segmentation, liver, volume, box(SHAPE, (3, 3, 3), (9, 9, 9)))
        surfaces.clear()  # a new volume: before the edit's surface was built
        await surfaces.wait_idle()
        assert model.GetScene() is None
        assert not headless.scene.GetNodesByClass("vtkMRMLModelNode").GetNumberOfItems()
        editor.write(segmentation, liver, volume, box(SHAPE, (4, 4, 4), (9, 9, 9)))
        await surfaces.wait_idle()
        assert not headless.scene.GetNodesByClass("vtkMRMLModelNode").GetNumberOfItems(), "no longer observed"

    run_in_own_loop(scenario)
