"""MedSAM2 propagation mechanics with the real sam2 video predictor (tiny random weights, real size)."""

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from IBISAgentLib.imaging.geometry import SliceGeometry
from IBISAgentLib.tools.propagation import (
    PropagationCancelled,
    PropagationOptions,
    SAM2Propagator,
    keep_largest_component,
)

SHAPE = (9, 40, 48)  # k, j, i


@pytest.fixture(scope="module")
def propagator(tiny_models, device):
    return SAM2Propagator(tiny_models[1], device=device)


@pytest.fixture(scope="module")
def nothing_there_propagator(tiny_models, tmp_path_factory, device):
    """MedSAM2 whose object-presence head always says 'no object': every propagated slice is empty."""
    state = torch.load(tiny_models[1], weights_only=True)["model"]
    head = sorted(k for k in state if k.startswith("sam_mask_decoder.pred_obj_score_head") and k.endswith("bias"))[-1]
    state[head] = torch.full_like(state[head], -1000.0)
    path = tmp_path_factory.mktemp("absent") / "medsam2_absent.pt"
    torch.save({"model": state}, path)
    return SAM2Propagator(path, device=device)


def setup(key_index=4):
    image = sitk.Image([SHAPE[2], SHAPE[1], SHAPE[0]], sitk.sitkUInt8)
    volume = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    key = SliceGeometry.of(image, "axial", key_index)
    mask = np.zeros((key.height, key.width), bool)
    mask[10:25, 12:30] = True
    return volume, key, mask


def test_visits_forward_then_backward_and_keeps_the_key_mask(propagator):
    volume, key, mask = setup()
    progress = []
    result = propagator.propagate(
        volume, key, mask, PropagationOptions(stop_after_empty=0), on_progress=lambda *args: progress.append(args)
    )
    assert result.visited == [4, 5, 6, 7, 8, 3, 2, 1, 0]
    assert progress == [(n + 1, 9, index) for n, index in enumerate(result.visited)]
    assert result.mask.shape == SHAPE
    assert np.array_equal(result.mask[4], mask)


def test_the_key_slice_is_exactly_the_given_mask(propagator):
    volume, key, _ = setup()
    rows, columns = np.ogrid[: key.height, : key.width]
    blob = ((rows - 20) ** 2 + (columns - 23) ** 2 < 90) | ((rows - columns) % 7 == 0) & (rows > 5) & (rows < 30)
    result = propagator.propagate(volume, key, blob, PropagationOptions(last=5, stop_after_empty=0))
    assert np.array_equal(key.extract(result.mask), blob)


def test_range_is_respected(propagator):
    volume, key, mask = setup()
    result = propagator.propagate(volume, key, mask, PropagationOptions(first=3, last=6, stop_after_empty=0))
    assert result.visited == [4, 5, 6, 3]
    assert not result.mask[:3].any() and not result.mask[7:].any()
    with pytest.raises(ValueError, match="contain the key slice"):
        propagator.propagate(volume, key, mask, PropagationOptions(first=5, last=8))


def test_each_direction_stops_after_k_empty_slices(nothing_there_propagator):
    volume, key, mask = setup()
    result = nothing_there_propagator.propagate(volume, key, mask, PropagationOptions(stop_after_empty=2))
    assert result.visited == [4, 5, 6, 3, 2]
    assert np.array_equal(result.mask[4], mask) and result.mask.sum() == mask.sum()


def test_cancel_returns_nothing_unless_partial_is_asked(propagator):
    volume, key, mask = setup()
    cancel = threading.Event()

    def cancel_after_two(done, total, index):
        if done == 2:
            cancel.set()

    with pytest.raises(PropagationCancelled):
        propagator.propagate(volume, key, mask, on_progress=cancel_after_two, cancel=cancel)
    cancel.clear()
    result = propagator.propagate(volume, key, mask, on_progress=cancel_after_two, cancel=cancel, partial=True)
    assert result.cancelled and result.visited == [4, 5]


def test_frames_are_rendered_on_demand_once(propagator, monkeypatch):
    from IBISAgentLib.tools import propagation

    rendered = []
    original = propagation.SliceFrames.__getitem__
    monkeypatch.setattr(propagation.SliceFrames, "__getitem__", lambda self, f: rendered.append(f) or original(self, f))
    volume, key, mask = setup()
    propagator.propagate(volume, key, mask, PropagationOptions(stop_after_empty=0))
    assert sorted(rendered) == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8]  # the key slice once per direction


def test_frames_are_the_image_tools_preprocessing_of_each_slice(propagator):
    """Slices are normalized on the model's device; the result is what sam2's transforms make of the slice."""
    from IBISAgentLib.tools.propagation import SliceFrames

    volume, key, _ = setup()
    frames = SliceFrames(volume, key, 0, 8, propagator.transforms, propagator.device)
    for frame in (0, 4, 8):
        plane = key.at(frame).extract(volume)
        expected = propagator.transforms(np.repeat(plane[:, :, None], 3, axis=2))
        assert frames[frame].shape == (3, 512, 512)
        assert torch.allclose(frames[frame].cpu(), expected, atol=1e-5), frame
    with pytest.raises(IndexError):
        frames[9]


def test_other_axes_and_bad_input(propagator):
    volume, key, mask = setup()
    coronal = SliceGeometry.of(sitk.Image([SHAPE[2], SHAPE[1], SHAPE[0]], sitk.sitkUInt8), "coronal", 20)
    key_mask = np.zeros((coronal.height, coronal.width), bool)
    key_mask[2:6, 10:20] = True
    result = propagator.propagate(volume, coronal, key_mask, PropagationOptions(first=18, last=21, stop_after_empty=0))
    assert result.visited == [20, 21, 19, 18]
    assert np.array_equal(coronal.extract(result.mask), key_mask)
    with pytest.raises(ValueError, match="empty"):
        propagator.propagate(volume, key, np.zeros_like(mask))
    with pytest.raises(ValueError, match="uint8"):
        propagator.propagate(volume.astype(np.int16), key, mask)


def test_largest_component():
    mask = np.zeros((5, 5, 5), bool)
    mask[0, 0, 0] = True
    mask[2:5, 2:5, 2:5] = True
    kept = keep_largest_component(mask)
    assert kept.sum() == 27 and not kept[0, 0, 0]
