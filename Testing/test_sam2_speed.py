"""The per-image constant work done once (``sam2_speed``) leaves sam2's outputs as stock sam2 computes them: the
position tables, and what bfloat16-held weights compute, bit for bit; the image features and a propagation within
float rounding; the shared tables unchanged by the work that reads them."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from IBISAgentLib.imaging.geometry import SliceGeometry
from IBISAgentLib.models.devices import autocast
from IBISAgentLib.tools import MEDSAM2
from IBISAgentLib.tools.click_tool import SAM2Tool
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


def block_volume() -> tuple[np.ndarray, SliceGeometry, np.ndarray]:
    volume = np.random.default_rng(2).integers(0, 256, (6, 512, 512), dtype=np.uint8)
    volume[:, 180:330, 200:300] = 230  # a bright block: the target, far from the random background
    key_mask = np.zeros((512, 512), bool)
    key_mask[180:330, 200:300] = True
    return volume, SliceGeometry.of(sitk.Image([512, 512, 6], sitk.sitkUInt8), "axial", 3), key_mask


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
    volume, key, key_mask = block_volume()
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


def test_bfloat16_weights_give_autocasts_features_bit_for_bit_and_leave_the_prompt_decoder_in_float32(
    tiny_models, device
):
    held = SAM2Tool(tiny_models[1], device, precision="bf16")._predictor.model
    cast = SAM2Tool(tiny_models[1], device, precision="fp32")._predictor.model
    encoder_weights = [
        p for m in held.image_encoder.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()
    ]
    assert encoder_weights and all(p.dtype == torch.bfloat16 for p in encoder_weights)
    assert all(p.dtype == torch.float32 for p in held.sam_mask_decoder.parameters())
    assert all(p.dtype == torch.float32 for p in held.sam_prompt_encoder.parameters())
    image = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(4)).to(device)
    with torch.inference_mode(), autocast(device, "bf16"):
        mine, theirs = held.forward_image(image), cast.forward_image(image)
    for a, b in zip(mine["backbone_fpn"], theirs["backbone_fpn"], strict=True):
        assert torch.equal(a, b)


def test_bfloat16_weights_propagate_as_autocast_does_bit_for_bit_and_near_stock_sam2(tiny_models, device):
    held = SAM2Propagator(tiny_models[1], device, precision="bf16")
    cast = SAM2Propagator(tiny_models[1], device, precision="bf16")
    cast.predictor = build_model(MEDSAM2, tiny_models[1], device, video=True)  # float32 weights, cast by autocast
    stock = SAM2Propagator(tiny_models[1], device, precision="bf16")
    stock.predictor = build_model(MEDSAM2, tiny_models[1], device, video=True, stock=True)
    assert all(p.dtype == torch.bfloat16 for p in held.predictor.memory_encoder.parameters() if p.dim() > 1)
    volume, key, key_mask = block_volume()
    options = PropagationOptions(stop_after_empty=0)
    mine, theirs = held.propagate(volume, key, key_mask, options), cast.propagate(volume, key, key_mask, options)
    assert np.array_equal(mine.mask, theirs.mask)
    # Against stock sam2, channels-last convolutions round in bfloat16 elsewhere; random weights leave most of
    # this mask's logits near 0, where rounding flips a pixel.
    reference = stock.propagate(volume, key, key_mask, options).mask
    assert np.count_nonzero(mine.mask & reference) / np.count_nonzero(mine.mask | reference) > 0.99
