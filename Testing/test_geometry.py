"""Slice geometry on random oblique, left-handed, anisotropic grids (property tests)."""

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from IBISAgentLib.imaging.geometry import AXES, SliceGeometry, lps_to_ras, parse_slice, ras_direction_letter


def make_image(size, spacing, direction, origin):
    image = sitk.Image([int(s) for s in size], sitk.sitkInt16)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    image.SetOrigin([float(o) for o in origin])
    return image


@st.composite
def grids(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))  # a random rotation or reflection (left-handed when det < 0)
    if draw(st.booleans()):
        q[:, 0] *= -1
    size = [draw(st.integers(1, 9)) for _ in range(3)]
    spacing = [draw(st.floats(0.2, 5.0)) for _ in range(3)]
    origin = rng.uniform(-300, 300, 3)
    return make_image(size, spacing, q, origin)


@settings(max_examples=200, deadline=None)
@given(grids(), st.sampled_from(AXES), st.data())
def test_round_trips_are_exact(image, axis, data):
    geometry = SliceGeometry.of(image, axis)
    column = data.draw(st.floats(0, geometry.width - 1))
    row = data.draw(st.floats(0, geometry.height - 1))
    ijk = geometry.pixel_to_ijk(column, row)
    assert np.allclose(geometry.ijk_to_pixel(ijk), (column, row), atol=1e-9)
    lps = geometry.ijk_to_lps(ijk)
    assert np.allclose(lps, image.TransformContinuousIndexToPhysicalPoint(ijk.tolist()), atol=1e-6)
    assert np.allclose(geometry.ijk_to_lps(geometry.lps_to_ijk(lps)), lps, atol=1e-6)
    ras = geometry.ijk_to_ras(ijk)
    assert np.allclose(ras, lps * [-1, -1, 1]) and np.allclose(lps_to_ras(ras), lps)
    assert np.allclose(geometry.ijk_to_ras(geometry.ras_to_ijk(ras)), ras, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(grids(), st.sampled_from(AXES), st.data())
def test_the_slice_through_a_point_is_the_one_with_the_nearest_voxel_centres(image, axis, data):
    geometry = SliceGeometry.of(image, axis)
    index = data.draw(st.integers(0, geometry.count - 1))
    offset = data.draw(st.floats(-0.49, 0.49))  # within half a voxel of that slice, along the normal
    ijk = geometry.at(index).pixel_to_ijk(data.draw(st.floats(0, geometry.width - 1)), 0.0)
    ijk[geometry.normal_axis] += offset
    assert geometry.through(geometry.ijk_to_ras(ijk)).index == index
    ijk[geometry.normal_axis] = geometry.count + 0.6  # beyond the last slice
    with pytest.raises(ValueError, match="outside"):
        geometry.through(geometry.ijk_to_ras(ijk))


def test_a_slab_is_the_range_of_slices_along_the_normal():
    image = make_image((4, 5, 6), (1, 1, 1), np.eye(3)[[1, 2, 0]], (0, 0, 0))  # permuted voxel axes
    volume = np.arange(6 * 5 * 4).reshape(6, 5, 4)
    for axis in AXES:
        geometry = SliceGeometry.of(image, axis)
        slab = geometry.slab(volume, 1, 2)
        for index in (1, 2):
            plane = geometry.at(index).extract(volume)
            assert np.isin(plane, slab).all() and not np.isin(geometry.at(0).extract(volume), slab).any()
        assert slab.size == 2 * geometry.width * geometry.height


@settings(max_examples=200, deadline=None)
@given(grids(), st.sampled_from(AXES), st.floats(0, 1), st.floats(0, 1))
def test_a_click_lands_on_the_voxel_with_the_nearest_centre(image, axis, x, y):
    geometry = SliceGeometry.of(image, axis)
    voxel = np.array(geometry.normalized_to_voxel(x, y))
    # Where the click is, physically: continuous pixel (x * W, y * H), clamped into the image.
    column = min(max(x * geometry.width, 0), geometry.width - 1)
    row = min(max(y * geometry.height, 0), geometry.height - 1)
    point = geometry.ijk_to_lps(geometry.pixel_to_ijk(column, row))
    tie = any(abs(v % 1 - 0.5) < 1e-9 for v in (column, row))  # halfway between two centres: either is nearest
    if not tie:
        assert list(voxel) == list(image.TransformPhysicalPointToIndex(point.tolist()))
    neighbours = [voxel + d for d in np.array(np.meshgrid(*[[-1, 0, 1]] * 3)).T.reshape(-1, 3)]
    inside = [v for v in neighbours if all(0 <= v[a] < image.GetSize()[a] for a in range(3))]
    distances = [np.linalg.norm(geometry.ijk_to_lps(v) - point) for v in inside]
    assert np.linalg.norm(geometry.ijk_to_lps(voxel) - point) <= min(distances) + 1e-6


@settings(max_examples=100, deadline=None)
@given(grids(), st.sampled_from(AXES))
def test_extract_and_insert_address_the_same_voxels_as_the_mapping(image, axis):
    volume = np.arange(np.prod(image.GetSize())).reshape(image.GetSize()[::-1])
    geometry = SliceGeometry.of(image, axis)
    plane = geometry.extract(volume)
    assert plane.shape == (geometry.height, geometry.width)
    for row in range(geometry.height):
        for column in range(geometry.width):
            i, j, k = geometry.pixel_to_ijk(column, row).astype(int)
            assert plane[row, column] == volume[k, j, i]
    target = np.zeros_like(volume)
    geometry.insert(target, np.ones_like(plane))
    assert target.sum() == plane.size
    assert (np.take(target, geometry.index, axis=2 - geometry.normal_axis) == 1).all()


@pytest.mark.parametrize(
    ("axis", "column_lps", "row_lps"),
    [("axial", [1, 0, 0], [0, 1, 0]), ("coronal", [1, 0, 0], [0, 0, -1]), ("sagittal", [0, 1, 0], [0, 0, -1])],
)
@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0])])
def test_screen_orientation_matches_slicer_views(axis, column_lps, row_lps, direction):
    """Right on screen is patient left (axial, coronal) or posterior (sagittal); down is P or I."""
    image = make_image((5, 6, 7), (1.0, 2.0, 3.0), direction, (0, 0, 0))
    geometry = SliceGeometry.of(image, axis, 1)
    origin = geometry.ijk_to_lps(geometry.pixel_to_ijk(0, 0))
    step_column = geometry.ijk_to_lps(geometry.pixel_to_ijk(1, 0)) - origin
    step_row = geometry.ijk_to_lps(geometry.pixel_to_ijk(0, 1)) - origin
    assert np.allclose(step_column / np.linalg.norm(step_column), column_lps)
    assert np.allclose(step_row / np.linalg.norm(step_row), row_lps)


def test_permuted_axes_are_found():
    # Voxel i runs superior->inferior, j runs left->right, k runs anterior->posterior (a sagittal-stack MR).
    direction = np.array([[0, 1, 0], [0, 0, 1], [-1, 0, 0]], dtype=float)
    image = make_image((4, 5, 6), (1, 1, 1), direction, (0, 0, 0))
    axial = SliceGeometry.of(image, "axial")
    assert (axial.normal_axis, axial.column_axis, axial.row_axis) == (0, 1, 2)
    assert (axial.count, axial.width, axial.height) == (4, 5, 6)


def test_one_slice_and_tiny_volumes():
    one = make_image((4, 3, 1), (1, 1, 1), np.eye(3), (0, 0, 0))
    geometry = SliceGeometry.of(one, "axial")
    assert geometry.index == 0 and geometry.count == 1
    tiny = make_image((2, 2, 2), (1, 1, 1), np.eye(3), (0, 0, 0))
    assert SliceGeometry.of(tiny, "sagittal").index == 1
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        SliceGeometry.of(tiny, "coronal", 2)


def test_parse_slice():
    assert parse_slice("axial:42") == ("axial", 42)
    assert parse_slice("Coronal") == ("coronal", None)
    with pytest.raises(ValueError, match="axis must be"):
        parse_slice("oblique:3")
    with pytest.raises(ValueError, match="whole number"):
        parse_slice("axial:x")


_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
_FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(_FINITE, min_size=3, max_size=3), st.floats(min_value=1e-3, max_value=1e3))
def test_an_edge_letter_names_the_dominant_direction_and_flips_with_the_vector(vector, scale):
    vector = np.array(vector)
    magnitudes = np.abs(vector)
    dominant = int(np.argmax(magnitudes))
    assume(magnitudes[dominant] > 0 and np.sum(magnitudes == magnitudes[dominant]) == 1)
    letter = ras_direction_letter(vector)
    assert letter == (("L", "R"), ("P", "A"), ("I", "S"))[dominant][int(vector[dominant] > 0)]
    assert ras_direction_letter(-vector) == _OPPOSITE[letter]
    assert ras_direction_letter(vector * scale) == letter


def test_edge_letters_of_slicer_views():
    # Slicer's axial view looks from the feet: screen right is the patient's left, screen up is anterior.
    assert ras_direction_letter(np.array([-1.0, 0.0, 0.0])) == "L"
    assert ras_direction_letter(np.array([0.0, 1.0, 0.0])) == "A"
    assert ras_direction_letter(np.array([0.3, -0.2, -0.9])) == "I"
