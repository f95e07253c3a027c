"""MedSAM2 built through sam2's own config machinery and loaded like MedSAM2_latest.pt."""

import pickle

import numpy as np
import pytest
import torch

from IBISAgentLib.agent.interfaces import Click
from IBISAgentLib.tools import MEDSAM2, CheckpointError
from IBISAgentLib.tools.click_tool import SAM2Tool
from IBISAgentLib.tools.sam2_model import build_model


@pytest.fixture(scope="module")
def model():
    return build_model(MEDSAM2, None, "cpu")


def test_architecture_is_medsam2(model):
    trunk = model.image_encoder.trunk
    assert model.image_size == 512
    assert trunk.blocks[0].dim == 96 and len(trunk.blocks) == 12  # stages [1, 2, 7, 2]
    assert trunk.stage_ends == [0, 2, 9, 11]
    assert model.image_encoder.neck.d_model == 256
    assert model.num_maskmem == 7
    assert model.memory_encoder.out_proj.out_channels == 64
    attention = model.memory_attention.layers[0]
    assert attention.self_attn.freqs_cis.shape[0] == 32 * 32
    assert attention.cross_attn_image.freqs_cis.shape[0] == 32 * 32


def test_predictions_are_at_image_resolution_with_low_res_logits(medsam2_tool, sample_image):
    medsam2_tool.set_image(sample_image)
    result = medsam2_tool.predict([Click(60, 40, True), Click(10, 10, False)], None)
    assert result.mask.shape == sample_image.shape[:2] and result.mask.dtype == bool
    assert result.logits.shape == (128, 128)
    assert np.isfinite(result.score)
    assert medsam2_tool.mask_to_logits(result.mask).shape == (128, 128)


def test_mask_to_logits_marks_inside_and_outside(medsam2_tool):
    mask = np.zeros((256, 512), bool)
    mask[:, 256:] = True
    logits = medsam2_tool.mask_to_logits(mask)
    assert (logits[:, 64:] > 0).all() and (logits[:, :64] < 0).all()


def test_needs_a_click_and_an_image(tiny_models, device):
    tool = SAM2Tool(tiny_models[1], device=device)
    with pytest.raises(RuntimeError, match="set_image"):
        tool.predict([Click(0, 0, True)], None)
    with pytest.raises(ValueError, match="at least one click"):
        tool.predict([], None)


def test_checkpoint_round_trip_gives_identical_weights(tiny_models, model):
    tool = SAM2Tool(tiny_models[1], device="cpu", precision="fp32")  # bf16 keeps the encoder's in bfloat16
    saved = torch.load(tiny_models[1], weights_only=True)["model"]
    for name, tensor in tool._predictor.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_wrong_checkpoints_are_refused_with_reasons(tmp_path, model):
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="no such"):
        SAM2Tool(missing, device="cpu")

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        SAM2Tool(corrupt, device="cpu")

    partial = tmp_path / "partial.pt"
    state = model.state_dict()
    torch.save({"model": {k: v for i, (k, v) in enumerate(state.items()) if i % 2}}, partial)
    with pytest.raises(CheckpointError, match="missing keys"):
        SAM2Tool(partial, device="cpu")

    not_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_dict)
    with pytest.raises(CheckpointError, match="'model' state dict"):
        SAM2Tool(not_dict, device="cpu")


class Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"model": Payload()}, handle)
    with pytest.raises(CheckpointError, match="weights-only"):
        SAM2Tool(evil, device="cpu")
    assert "pickle code ran" not in capsys.readouterr().out


def test_embeddings_of_recent_images_are_reused(tiny_models, sample_image, device):
    tool = SAM2Tool(tiny_models[1], device=device, cached_images=2)
    other = np.ascontiguousarray(sample_image[::-1])
    third = np.ascontiguousarray(sample_image[:, ::-1])
    clicks = [Click(60, 40, True)]
    tool.set_image(sample_image)
    first = tool.predict(clicks, None)
    tool.set_image(other)
    tool.predict(clicks, None)
    tool.set_image(sample_image)  # back to the first image: restored, not recomputed
    again = tool.predict(clicks, None)
    assert tool.embeddings_computed == 2
    assert np.array_equal(first.mask, again.mask) and first.score == again.score
    tool.set_image(third)  # evicts the least recently used image (other)
    tool.set_image(other)
    assert tool.embeddings_computed == 4
