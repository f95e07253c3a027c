"""``ibisagent segment`` on volumes: slices, clicks in IJK/RAS, masks on the input grid, propagation."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from test_cli import SCHEMA, ibisagent, replay_file
from volume_data import ct_phantom, mni_crop

from IBISAgentLib.imaging.geometry import SliceGeometry

OUTPUTS = [
    "<think>here</think><action>Positive Point (0.5000, 0.5000)</action>",
    "<think>less</think><action>Negative Point (0.1000, 0.2000)</action>",
    "<think>done</think><action>Terminate</action><answer>Done.</answer>",
]


@pytest.fixture()
def mri(tmp_path):
    path = tmp_path / "brain.nii.gz"
    sitk.WriteImage(mni_crop(), str(path))
    return path


def test_segment_a_coronal_slice_of_a_real_mr(tmp_path, tiny_models, mri):
    result = ibisagent(
        "segment", mri, "--prompt", "segment the white matter", "--slice", "coronal:30",
        "--mllm", replay_file(tmp_path, OUTPUTS), "--sam2", tiny_models[1], "--out", tmp_path / "wm.nrrd",
        "--trace", tmp_path / "trace.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    volume, mask = sitk.ReadImage(str(mri)), sitk.ReadImage(str(tmp_path / "wm.nrrd"))
    assert mask.GetSize() == volume.GetSize() and mask.GetDirection() == volume.GetDirection()
    assert np.allclose(mask.GetOrigin(), volume.GetOrigin()) and np.allclose(mask.GetSpacing(), volume.GetSpacing())
    labels = sitk.GetArrayFromImage(mask)
    assert labels[:, 30, :].any() and labels.sum() == labels[:, 30, :].sum()  # only on the coronal plane j = 30

    trace = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    assert trace["slice"]["axis"] == "coronal" and trace["slice"]["index"] == 30
    assert trace["slice"]["window"].startswith("percentile")
    geometry = SliceGeometry.of(volume, "coronal", 30)
    for step in trace["steps"][:2]:
        i, j, k = step["ijk"]
        assert j == 30
        assert step["ijk"] == [int(v) for v in geometry.pixel_to_ijk(*step["pixel"])]
        lps = volume.TransformIndexToPhysicalPoint((i, j, k))
        assert step["ras"] == pytest.approx([-lps[0], -lps[1], lps[2]])
    assert trace["steps"][1]["mask_area"] == int(labels.sum())


def test_propagate_through_a_range_of_a_ct(tmp_path, tiny_models):
    image = sitk.GetImageFromArray(ct_phantom((7, 40, 48)))
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    result = ibisagent(
        "segment", tmp_path / "ct.mha", "--prompt", "segment the bone", "--slice", "axial:3", "--propagate",
        "--range", "2:5", "--stop-after-empty", "0", "--mllm", replay_file(tmp_path, OUTPUTS),
        "--sam2", tiny_models[1], "--out", tmp_path / "bone.nii.gz", "--trace", tmp_path / "trace.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "propagating" in result.stderr and "propagated through 4 slices" in result.stdout
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "bone.nii.gz")))
    assert labels.shape == (7, 40, 48)
    assert [bool(labels[k].any()) for k in range(7)] == [False, False, True, True, True, True, False]
    trace = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    assert trace["slice"]["window"].startswith("abdomen")
    import jsonschema

    jsonschema.validate(trace, SCHEMA)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--slice", "oblique:3"], "axis must be one of"),
        (["--slice", "axial:99"], "outside 0..9"),
        (["--window", "soft"], "--window 'soft'"),
        (["--out", "mask.png"], "written as .nii.gz"),
        (["--propagate", "--range", "0:2"], "contain the key slice 5"),
        (["--initial-mask", "other.nrrd"], "labelmap size"),
    ],
)
def test_bad_volume_input_exits_2(tmp_path, tiny_models, mri, extra, reason):
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkUInt8), str(tmp_path / "other.nrrd"))
    args = ["segment", mri, "--prompt", "x", "--mllm", replay_file(tmp_path, OUTPUTS), "--sam2", tiny_models[1]]
    result = ibisagent(*args, *extra, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr and "Traceback" not in result.stderr


def test_nan_and_4d_volumes_and_2d_only_flags(tmp_path):
    nan = sitk.GetImageFromArray(np.full((3, 4, 4), np.nan, np.float32))
    sitk.WriteImage(nan, str(tmp_path / "nan.nrrd"))
    sitk.WriteImage(sitk.Image([3, 3, 3, 2], sitk.sitkInt16), str(tmp_path / "4d.nii.gz"))
    for path, reason in ((tmp_path / "nan.nrrd", "NaN"), (tmp_path / "4d.nii.gz", "is 4D")):
        result = ibisagent("segment", path, "--prompt", "x", cwd=tmp_path)
        assert result.returncode == 2 and reason in result.stderr
    from conftest import SAMPLE

    result = ibisagent("segment", SAMPLE, "--prompt", "x", "--propagate", cwd=tmp_path)
    assert result.returncode == 2 and "--propagate applies to volumes" in result.stderr
