"""The per-image constant work done once (``sam2_speed``) leaves sam2's outputs as stock sam2 computes them: the
position tables bit for bit, the image features and a propagation within float rounding, and the shared tables
unchanged by the work that reads them."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from IBISAgentLib.imaging.geometry import SliceGeometry
from IBISAgentLib.models.devices import autocast
from IBISAgentLib.tools import MEDSAM2
from IBISAgentLib.tools.propagation import PropagationOptions, SAM2Propagator
from IBISAgentLib.tools.sam2_model import build_model


@pytest.fixture(scope="module")
def propagators(tiny_models, device) -> tuple[SAM2Propagator, SAM2Propagator]:
    """Ours, and one whose network is stock sam2's with the same weights."""
    ours = SAM2Propagator(tiny_models[1], device, precision="fp32")
    stock = SAM2Propagator(tiny_models[1], device, precision="fp32")
    stock.predictor = build_model(MEDSAM2, tiny_models[1], device, video=True, stock=True)
    return ours, stock


def position_tables(model) -> list[torch.Tensor]:
    features = torch.zeros(1, 256, 128, 128, device=model.device)
    memory = torch.zeros(1, 64, 32, 32, device=model.device)
    return [
        model.image_encoder.trunk._get_pos_embed(torch.Size((128, 128))),
        model.image_encoder.neck.position_encoding(features).to(features.dtype),
        model.image_encoder.neck.position_encoding(features.bfloat16()).to(torch.bfloat16),
        model.memory_encoder.position_encoding(memory).to(memory.dtype),
    ]


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference.float() - other.float()).norm() / reference.float().norm())


def test_position_tables_are_stock_sam2s_bit_for_bit(propagators):
    ours, stock = (p.predictor for p in propagators)
    with torch.inference_mode():
        for mine, theirs in zip(position_tables(ours), position_tables(stock), strict=True):
            assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_image_features_match_stock_sam2(propagators, device, precision):
    ours, stock = (p.predictor for p in propagators)
    image = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode(), autocast(device, precision):
        mine, theirs = ours.forward_image(image), stock.forward_image(image)
    for key in ("backbone_fpn", "vision_pos_enc"):
        for a, b in zip(mine[key], theirs[key], strict=True):
            # Channels-last convolutions add the same products in another order: float32 rounding, no more.
            assert a.shape == b.shape and a.dtype == b.dtype
            assert relative_error(b, a) < (1e-5 if precision == "fp32" else 1e-2)


def test_propagation_matches_stock_sam2_and_leaves_the_shared_tables_as_they_were(propagators, device):
    ours, stock = propagators
    volume = np.random.default_rng(2).integers(0, 256, (6, 512, 512), dtype=np.uint8)
    volume[:, 180:330, 200:300] = 230  # a bright block: the target, far from the random background
    key_mask = np.zeros((512, 512), bool)
    key_mask[180:330, 200:300] = True
    key = SliceGeometry.of(sitk.Image([512, 512, 6], sitk.sitkUInt8), "axial", 3)
    options = PropagationOptions(stop_after_empty=0)
    with torch.inference_mode():
        tables_before = [t.clone() for t in position_tables(ours.predictor)]
    first = ours.propagate(volume, key, key_mask, options)
    second = ours.propagate(volume, key, key_mask, options)
    theirs = stock.propagate(volume, key, key_mask, options)
    assert np.array_equal(first.mask, second.mask)
    overlap = np.count_nonzero(first.mask & theirs.mask) / np.count_nonzero(first.mask | theirs.mask)
    assert overlap > 0.999
    with torch.inference_mode():
        for before, after in zip(tables_before, position_tables(ours.predictor), strict=True):
            assert torch.equal(before, after)
