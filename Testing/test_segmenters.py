"""Every SAM 2 family segmenter through the real sam2 loading code, with random weights at real size:
the variant table, detection from a checkpoint's tensors, clicks and propagation at 1024 px, a MedSAM2
propagator beside a SAM 2 click tool, and the command line's choices."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE
from test_cli import ibisagent, replay_file
from volume_data import ct_phantom

from IBISAgentLib.agent.backends import LocalBackend
from IBISAgentLib.agent.interfaces import Click
from IBISAgentLib.imaging.geometry import SliceGeometry
from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.models.devices import resolve_precision
from IBISAgentLib.models.tiny_models import build_random_segmenter
from IBISAgentLib.models.weights import WeightsUnavailable
from IBISAgentLib.policies import ReplayPolicy
from IBISAgentLib.tools import MEDSAM2, SETTINGS, VARIANTS, CheckpointError, resolve_segmenter, variant_named
from IBISAgentLib.tools.propagation import PropagationOptions
from IBISAgentLib.tools.resolve import SegmenterSpec
from IBISAgentLib.tools.sam2_model import build_model

CLICK = "<think>here</think><action>Positive Point (0.5000, 0.5000)</action>"
DONE = "<think>done</think><action>Terminate</action><answer>Done.</answer>"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Random-weight checkpoints in the released files' layout, named as released."""
    folder = tmp_path_factory.mktemp("segmenters")
    return {
        name: build_random_segmenter(folder / variant_named(name).hub_file, variant_named(name))
        for name in ("sam2-hiera-t", "sam2.1-hiera-t")
    }


def test_the_variant_table_is_the_sam2_packages_own_mapping():
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    ours = {v.hub_repo: (v.config, v.hub_file) for v in VARIANTS if v is not MEDSAM2}
    assert ours == HF_MODEL_ID_TO_FILENAMES
    assert SETTINGS["released"] == "facebook/sam2-hiera-large:sam2_hiera_large.pt"
    assert SETTINGS["paper"] == "wanglab/MedSAM2:MedSAM2_latest.pt"
    assert [v.name for v in VARIANTS] == [
        "medsam2",
        *(f"sam2{x}-hiera-{s}" for x in ("", ".1") for s in ["t", "s", "b+", "l"]),
    ]


@pytest.mark.parametrize("name", ["medsam2", "sam2-hiera-s", "sam2.1-hiera-b+", "sam2-hiera-l"])
def test_each_size_builds_with_its_image_size_and_feature_grids(name):
    variant = variant_named(name)
    model = build_model(variant, None, "cpu", video=True)
    assert model.image_size == variant.image_size
    attention = model.memory_attention.layers[0]
    assert attention.self_attn.freqs_cis.shape[0] == (variant.image_size // 16) ** 2
    size = "t" if name == "medsam2" else name.rsplit("-", 1)[1]
    assert model.image_encoder.trunk.blocks[0].dim == {"t": 96, "s": 96, "b+": 112, "l": 144}[size]


def test_the_variant_is_told_by_the_tensors_or_the_name(checkpoints, tiny_models, tmp_path):
    assert resolve_segmenter(str(checkpoints["sam2-hiera-t"])).variant.name == "sam2-hiera-t"
    assert resolve_segmenter(str(checkpoints["sam2.1-hiera-t"])).variant.name == "sam2.1-hiera-t"  # its file name
    assert resolve_segmenter(str(tiny_models[1])).variant is MEDSAM2  # medsam2.pt
    anonymous = tmp_path / "weights.pt"
    shutil.copy(checkpoints["sam2.1-hiera-t"], anonymous)
    with pytest.raises(CheckpointError, match=r"fit medsam2 or sam2.1-hiera-t.*--sam2-variant"):
        resolve_segmenter(str(anonymous))
    assert resolve_segmenter(str(anonymous), "sam2.1-hiera-t").variant.image_size == 1024
    assert resolve_segmenter(str(anonymous), "medsam2").variant.image_size == 512


def test_foreign_and_mismatched_checkpoints_are_clear_errors(checkpoints, tmp_path):
    state = torch.load(checkpoints["sam2-hiera-t"], weights_only=True)["model"]
    renamed = tmp_path / "renamed.pt"
    torch.save({"model": {f"other.{k}": v for k, v in state.items()}}, renamed)
    with pytest.raises(CheckpointError, match="not a SAM 2 family checkpoint"):
        resolve_segmenter(str(renamed))
    trimmed = tmp_path / "trimmed.pt"
    torch.save({"model": dict(list(state.items())[:-5])}, trimmed)
    with pytest.raises(CheckpointError, match=r"fit no SAM 2 family variant.*closest: sam2-hiera-t"):
        resolve_segmenter(str(trimmed))
    wrong = resolve_segmenter(str(checkpoints["sam2-hiera-t"]), "sam2-hiera-s")
    with pytest.raises(CheckpointError, match="does not match SAM 2 hiera-s"):
        wrong.tool("cpu")
    with pytest.raises(ValueError, match="no segmenter variant 'sam3'"):
        resolve_segmenter(str(checkpoints["sam2-hiera-t"]), "sam3")


def test_a_released_id_names_its_file_and_variant_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsUnavailable, match=r"hf download facebook/sam2-hiera-large sam2_hiera_large\.pt"):
        resolve_segmenter("facebook/sam2-hiera-large")


def test_clicks_at_1024_px(checkpoints, sample_image):
    tool = resolve_segmenter(str(checkpoints["sam2-hiera-t"])).tool("cpu")
    tool.set_image(sample_image)
    result = tool.predict([Click(60, 40, True), Click(10, 10, False)], None)
    assert result.mask.shape == sample_image.shape[:2] and result.logits.shape == (256, 256)
    assert tool.mask_to_logits(result.mask).shape == (256, 256)
    assert tool.identity() == {"tool_variant": "sam2-hiera-t", "tool_image_size": "1024",
                               "tool_checkpoint": str(checkpoints["sam2-hiera-t"]), "tool_device": "cpu",
                               "tool_precision": resolve_precision("auto", "cpu")}  # fmt: skip


def test_propagation_at_1024_px_in_both_directions(checkpoints):
    propagator = resolve_segmenter(str(checkpoints["sam2-hiera-t"])).propagator("cpu")
    assert propagator.transforms.resolution == 1024
    image = sitk.Image([40, 32, 5], sitk.sitkUInt8)
    volume = np.random.default_rng(0).integers(0, 256, (5, 32, 40), dtype=np.uint8)
    key = SliceGeometry.of(image, "axial", 2)
    mask = np.zeros((key.height, key.width), bool)
    mask[8:20, 10:30] = True
    result = propagator.propagate(volume, key, mask, PropagationOptions(stop_after_empty=0))
    assert sorted(result.visited) == [0, 1, 2, 3, 4]
    assert result.mask[2].any()


def test_a_medsam2_propagator_beside_a_sam2_click_tool(checkpoints, tiny_models):
    tool = resolve_segmenter(str(checkpoints["sam2-hiera-t"])).tool("cpu")
    propagator = SegmenterSpec(MEDSAM2, tiny_models[1])
    backend = LocalBackend(lambda: ReplayPolicy([CLICK, DONE]), tool, device="cpu", propagator=propagator)
    case = VolumeCase.of(sitk.GetImageFromArray(ct_phantom((5, 40, 48))), "axial:2")
    session = backend.open_session(case, "segment the bone")
    trace = session.run()
    models = trace.models
    assert (models["tool_variant"], models["tool_image_size"]) == ("sam2-hiera-t", "1024")
    assert (models["propagator_variant"], models["propagator_image_size"]) == ("medsam2", "512")
    assert models["propagator_checkpoint"] == str(tiny_models[1])
    if not session.mask.any():
        pytest.skip("the random click tool found nothing to propagate")
    mask = backend.propagate(session, PropagationOptions(stop_after_empty=0))
    assert backend.propagator.variant is MEDSAM2 and mask.shape == case.windowed.shape and mask[2].any()


def test_the_weight_free_tool_propagates_with_its_own_propagator(sample_image):
    from IBISAgentLib.tools.classical import ClassicalPropagator, RandomWalkerTool

    backend = LocalBackend(lambda: ReplayPolicy([DONE]), RandomWalkerTool())
    assert isinstance(backend.propagator, ClassicalPropagator)


def test_the_command_line_runs_sam2_hiera_large_at_1024_px(tmp_path):
    result = ibisagent("dev", "tiny-models", tmp_path / "models", "--variant", "sam2-hiera-l", "--variant", "medsam2")
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "models" / "sam2-hiera-l-random.pt"
    medsam2, variant = tmp_path / "models" / "medsam2.pt", tmp_path / "models" / "medsam2-random.pt"
    assert f"tiny MedSAM2:   {medsam2}" in result.stdout and f"random medsam2: {variant}" in result.stdout
    assert medsam2.read_bytes() != variant.read_bytes()  # two files: the variant did not write over the tiny one
    run = ibisagent(
        "segment", SAMPLE, "--prompt", "segment the vertebral body", "--mllm", replay_file(tmp_path, [CLICK, DONE]),
        "--sam2", checkpoint, "--sam2-variant", "sam2-hiera-l", "--trace", tmp_path / "trace.json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    models = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))["models"]
    assert models["tool"].startswith("SAM 2 hiera-l") and models["tool_image_size"] == "1024"


def test_the_command_line_propagates_with_a_medsam2_propagator(tmp_path, checkpoints, tiny_models):
    image = sitk.GetImageFromArray(ct_phantom((5, 40, 48)))
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    run = ibisagent(
        "segment", tmp_path / "ct.mha", "--prompt", "segment the bone", "--slice", "axial:2", "--propagate",
        "--stop-after-empty", "0", "--mllm", replay_file(tmp_path, [CLICK, DONE]),
        "--sam2", checkpoints["sam2-hiera-t"], "--propagator", tiny_models[1], "--out", tmp_path / "bone.nii.gz",
        "--trace", tmp_path / "trace.json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    models = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))["models"]
    assert models["tool_variant"] == "sam2-hiera-t" and models["propagator_variant"] == "medsam2"


def test_an_undecidable_checkpoint_is_exit_2_naming_the_candidates(tmp_path, tiny_models):
    anonymous = tmp_path / "weights.pt"
    shutil.copy(tiny_models[1], anonymous)
    run = ibisagent("segment", SAMPLE, "--prompt", "x", "--mllm", replay_file(tmp_path, [DONE]), "--sam2", anonymous,
                    cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2 and "medsam2 or sam2.1-hiera-t" in run.stderr and "Traceback" not in run.stderr
